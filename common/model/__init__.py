"""The model: the from-scratch Llama (`llama`, `layers`, `attention`), its serving layout (`fused`), the contiguous
KV cache (`kv_cache`), greedy decoding (`generate`), and the facts every calculator shares: real model shapes
(`model_shapes`) and the one KV-bytes formula (`kv_math`).

Import from the modules (`from common.model.llama import Llama`): this package imports nothing, so the calculators
that only need `kv_math` or `model_shapes` do not load torch through it.
"""
