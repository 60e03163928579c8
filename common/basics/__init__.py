"""Chapter 5's inference basics, each a small working model of one idea that chapter 7's engine grows up:
chunked prefill (`chunked_prefill`), static vs ragged batching (`batching`) and decode-first token-budget steps
run on a real model (`token_budget`).
"""
