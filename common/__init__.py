"""Companion library of 《LLM推理优化实战》: a small, readable inference stack written from scratch.

The layout follows the book's architecture:
`common.model` (the from-scratch Llama, KV cache, generate, model shapes and the KV formula),
`common.hardware` (chapter 3: measured peaks, roofline, memory and cost calculators, monitors),
`common.basics` (chapter 5: chunked prefill, batching, token budget), `common.paged` (chapter 6),
`common.engine` (chapter 7), `common.quant`, `common.spec`, `common.serve`, `common.router`, `common.bench`,
`common.peers` (vLLM, SGLang, llama.cpp), `common.sim` (the step-level simulators) and `common.models`
(model registry and loaders). The top-level modules are utilities (device, paths, runinfo, seeds, errata, doctor,
site) and `common.demo` (`make demo`). Entry points live in submodules so that importing `common` stays cheap.
"""
