"""Chapter 8: weight and KV-cache quantization written from scratch.

rtn          round-to-nearest (symmetric / asymmetric; per-tensor, per-channel, per-group) and SQNR
packing      INT4 packing: two per uint8, eight per int32
qlinear      weight-only quantized linear layers that replace nn.Linear in common.model.llama.Llama
int4pack     real INT4 decode: our INT4 codes run by torch's CPU int4 kernel (Int4PackLinear, int4pack_model)
gptq         GPTQ (inverse-Hessian error feedback, lazy blocks)
awq          AWQ (activation-aware per-channel scale search)
smoothquant  SmoothQuant (difficulty migration) and W8A8 linear layers
nf4          NF4 levels (book formula vs QLoRA's table) and Lloyd-Max
kv_int8      a contiguous KV cache stored in INT8 with per-token scales
kv_int8_paged the paged engine's KV store in INT8 (LLM(kv_cache_dtype="int8"))
fake_quant   fake quantization with a straight-through estimator (QAT)
gguf_q4_1    a hand-written GGUF reader and Q4_1 block decoder
eval         perplexity, next-token agreement, decode throughput
"""
