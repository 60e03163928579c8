"""Real peer engines run beside ours on the same model and workload: vLLM, SGLang, transformers."""
