"""Step-level simulators: no model and no KV tensors, so a whole trace replays in milliseconds.

`token_budget` replays chapter 5's token-budget scheduler, `cache_hits` counts prefix-cache hits of a trace
(block hashing as vLLM, a radix tree as SGLang; chapter 6), `reservation` compares KV admission policies
(worst case, β, on demand; chapter 7).
"""
