"""Companion library of 《LLM推理优化实战》: a small, readable inference stack written from scratch.

Entry points live in submodules so that importing `common` stays cheap:
`common.models` (model registry and loaders), `common.llama` (the from-scratch model),
`common.attention`, `common.kv_cache`, `common.generate`, `common.hardware`.
"""
