"""Fused CPU kernels for the serving layout's bf16 layers: RMSNorm (with the residual add), RoPE, SiLU-and-mul;
and the greedy sampler's argmax.

Why: at decode a layer's activations are a few KB, so each eager op costs its dispatch (microseconds), not
its arithmetic. PyTorch's RMSNorm as Hugging Face writes it is eight ops, RoPE on q and k a dozen, the
residual adds and SwiGLU's gate three more: about 30 dispatches per layer that these three C++ kernels
replace with four (vLLM's `fused_add_rms_norm`, `rotary_embedding` and `silu_and_mul` do the same on GPU).
One more kernel serves the sampler: greedy argmax straight from the bf16 logits (at batch 64 the fp32 copy of
[64, 49152] logits and torch's argmax over it took about 2 ms of a step).

Each kernel rounds to bf16 exactly where the eager bf16 ops round (math in fp32, one bf16 rounding per eager
op), so its output equals the eager layer's to the last bit except where a sum's order differs (the RMS
statistic: at most one bf16 step, measured in tests/test_cpu_ops.py). Only bf16 CPU tensors take this path:
fp32 runs keep the eager ops, so fp32 stays exact against transformers.

Built once per machine by `common.cpp_extension.load_cpu_extension` (tens of seconds; then cached) and registered
as torch ops (`torch.ops.llm_labs_kernels.rms_norm`, ...), so torch.profiler shows them by name.
"""
from __future__ import annotations

import functools

import torch

from ..cpp_extension import bound_ops, cpu_extension_available

CPP_SOURCE = r"""
using bf16 = at::BFloat16;
static inline float f(bf16 x) { return static_cast<float>(x); }
static inline bf16 r(float x) { return static_cast<bf16>(x); }   // round to nearest even, as eager bf16 ops do

// y = weight * bf16(h * rsqrt(mean(h^2) + eps)) per row of h (Hugging Face's LlamaRMSNorm in bf16).
static inline void rms_row(const bf16* h, const bf16* w, bf16* y, int64_t n, float eps) {
  float sum = 0.f;
#pragma omp simd reduction(+ : sum)
  for (int64_t i = 0; i < n; ++i) sum += f(h[i]) * f(h[i]);
  const float inv = 1.f / std::sqrt(sum / static_cast<float>(n) + eps);
  for (int64_t i = 0; i < n; ++i) y[i] = r(f(w[i]) * f(r(f(h[i]) * inv)));
}

static void check(const torch::Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == torch::kBFloat16 && t.is_contiguous(),
              name, " must be a contiguous bf16 CPU tensor");
}

torch::Tensor rms_norm(torch::Tensor x, torch::Tensor weight, double eps) {
  check(x, "x"); check(weight, "weight");
  const int64_t n = x.size(-1), rows = x.numel() / n;
  auto y = torch::empty_like(x);
  const bf16* xp = x.data_ptr<bf16>(); const bf16* wp = weight.data_ptr<bf16>(); bf16* yp = y.data_ptr<bf16>();
  at::parallel_for(0, rows, 16, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) rms_row(xp + i * n, wp, yp + i * n, n, static_cast<float>(eps));
  });
  return y;
}

// h = bf16(residual + x); returns {h, rms_norm(h) * weight} in one pass over the rows.
std::vector<torch::Tensor> add_rms_norm(torch::Tensor x, torch::Tensor residual, torch::Tensor weight, double eps) {
  check(x, "x"); check(residual, "residual"); check(weight, "weight");
  TORCH_CHECK(x.sizes() == residual.sizes(), "x and residual must have the same shape");
  const int64_t n = x.size(-1), rows = x.numel() / n;
  auto h = torch::empty_like(x), y = torch::empty_like(x);
  const bf16* xp = x.data_ptr<bf16>(); const bf16* rp = residual.data_ptr<bf16>();
  const bf16* wp = weight.data_ptr<bf16>(); bf16* hp = h.data_ptr<bf16>(); bf16* yp = y.data_ptr<bf16>();
  at::parallel_for(0, rows, 16, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      for (int64_t j = 0; j < n; ++j) hp[i * n + j] = r(f(rp[i * n + j]) + f(xp[i * n + j]));
      rms_row(hp + i * n, wp, yp + i * n, n, static_cast<float>(eps));
    }
  });
  return {h, y};
}

// In place on the packed projection qkv [B, T, (Hq + 2 Hkv) * D]: rotate the first Hq + Hkv heads (q and k) of
// each token by its cos/sin row [T, D] (shared by the B sequences): x * cos + rotate_half(x) * sin, rounded as the
// three eager bf16 ops round.
void rope_(torch::Tensor qkv, torch::Tensor cos, torch::Tensor sin, int64_t rotated_heads, int64_t head_dim) {
  check(qkv, "qkv"); check(cos, "cos"); check(sin, "sin");
  const int64_t width = qkv.size(-1), rows = qkv.numel() / width, tokens = cos.size(0), half = head_dim / 2;
  TORCH_CHECK(cos.dim() == 2 && cos.sizes() == sin.sizes() && cos.size(1) == head_dim && rows % tokens == 0 &&
              rotated_heads * head_dim <= width, "qkv [B, T, width] and cos/sin [T, head_dim] do not match");
  bf16* qp = qkv.data_ptr<bf16>(); const bf16* cp = cos.data_ptr<bf16>(); const bf16* sp = sin.data_ptr<bf16>();
  at::parallel_for(0, rows, 4, [&](int64_t b, int64_t e) {
    for (int64_t row = b; row < e; ++row) {
      const bf16* c = cp + (row % tokens) * head_dim; const bf16* s = sp + (row % tokens) * head_dim;
      for (int64_t h = 0; h < rotated_heads; ++h) {
        bf16* x = qp + row * width + h * head_dim;
        int64_t i = 0;
#ifdef __AVX512F__
        for (; half % 16 == 0 && i < half; i += 16) {
          const __m512 x1 = load_bf16x16(x + i), x2 = load_bf16x16(x + i + half);
          const __m512 c1 = load_bf16x16(c + i), c2 = load_bf16x16(c + i + half);
          const __m512 s1 = load_bf16x16(s + i), s2 = load_bf16x16(s + i + half);
          const __m512 lo = _mm512_add_ps(round_bf16(_mm512_mul_ps(x1, c1)),
                                          round_bf16(_mm512_mul_ps(_mm512_sub_ps(_mm512_setzero_ps(), x2), s1)));
          const __m512 hi = _mm512_add_ps(round_bf16(_mm512_mul_ps(x2, c2)), round_bf16(_mm512_mul_ps(x1, s2)));
          store_bf16x16(x + i, lo);
          store_bf16x16(x + i + half, hi);
        }
#endif
        for (; i < half; ++i) {
          const float x1 = f(x[i]), x2 = f(x[i + half]);
          x[i] = r(f(r(x1 * f(c[i]))) + f(r(-x2 * f(s[i]))));
          x[i + half] = r(f(r(x2 * f(c[i + half]))) + f(r(x1 * f(s[i + half]))));
        }
      }
    }
  });
}

// gate_up [..., 2I] -> bf16(bf16(silu(gate)) * up) [..., I] (SwiGLU's activation, as F.silu then a bf16 mul).
torch::Tensor silu_and_mul(torch::Tensor gate_up) {
  check(gate_up, "gate_up");
  const int64_t width = gate_up.size(-1), inter = width / 2, rows = gate_up.numel() / width;
  auto sizes = gate_up.sizes().vec(); sizes.back() = inter;
  auto out = torch::empty(sizes, gate_up.options());
  const bf16* gp = gate_up.data_ptr<bf16>(); bf16* op = out.data_ptr<bf16>();
  at::parallel_for(0, rows, 1, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      const bf16* g = gp + i * width; const bf16* u = g + inter; bf16* o = op + i * inter;
      int64_t j = 0;
#ifdef __AVX512F__
      for (; j + 16 <= inter; j += 16) {
        const __m512 x = load_bf16x16(g + j);
        const __m512 e = exp16(_mm512_sub_ps(_mm512_setzero_ps(), x));
        const __m512 silu = _mm512_div_ps(x, _mm512_add_ps(_mm512_set1_ps(1.f), e));
        store_bf16x16(o + j, _mm512_mul_ps(round_bf16(silu), load_bf16x16(u + j)));
      }
#endif
      for (; j < inter; ++j) {
        const float x = f(g[j]);
        o[j] = r(f(r(x / (1.f + std::exp(-x)))) * f(u[j]));
      }
    }
  });
  return out;
}

// Index of each row's largest value of x [rows, n]: the first one on ties, a NaN counting as the largest
// (torch.argmax's rules). Read in bf16: widening to fp32 is exact and keeps the order, so this is argmax of
// the fp32 copy without writing that copy.
static int64_t argmax_row(const bf16* x, int64_t n) {
  float best = -INFINITY; int64_t arg = 0, j = 0; bool nan = false;
#ifdef __AVX512F__
  if (n >= 16) {
    __m512 vbest = _mm512_set1_ps(-INFINITY);
    __m512i vidx = _mm512_setzero_si512();
    __m512i cur = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    const __m512i step = _mm512_set1_epi32(16);
    __mmask16 nans = 0;
    for (; j + 16 <= n; j += 16, cur = _mm512_add_epi32(cur, step)) {   // lane l holds elements l, l + 16, ...
      const __m512 v = load_bf16x16(x + j);
      const __mmask16 gt = _mm512_cmp_ps_mask(v, vbest, _CMP_GT_OQ);
      nans |= _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
      vbest = _mm512_mask_mov_ps(vbest, gt, v);
      vidx = _mm512_mask_mov_epi32(vidx, gt, cur);
    }
    best = _mm512_reduce_max_ps(vbest);   // the first index among the lanes that hold it
    arg = _mm512_mask_reduce_min_epi32(_mm512_cmp_ps_mask(vbest, _mm512_set1_ps(best), _CMP_EQ_OQ), vidx);
    nan = nans != 0;
  }
#endif
  for (; j < n; ++j) {
    const float v = f(x[j]);
    if (v > best) { best = v; arg = j; }
    nan |= std::isnan(v);
  }
  if (nan) for (j = 0; j < n; ++j) if (std::isnan(f(x[j]))) return j;
  return arg;
}

torch::Tensor argmax_rows(torch::Tensor x) {
  check(x, "x");
  TORCH_CHECK(x.dim() == 2 && x.size(1) > 0 && x.size(1) < (int64_t(1) << 31), "x must be [rows, n], 0 < n < 2^31");
  const int64_t rows = x.size(0), n = x.size(1);
  auto out = torch::empty({rows}, x.options().dtype(torch::kLong));
  const bf16* xp = x.data_ptr<bf16>(); int64_t* op = out.data_ptr<int64_t>();
  at::parallel_for(0, rows, 1, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) op[i] = argmax_row(xp + i * n, n);
  });
  return out;
}
"""


SCHEMAS = (("rms_norm", "rms_norm(Tensor x, Tensor weight, float eps) -> Tensor"),
           ("add_rms_norm", "add_rms_norm(Tensor x, Tensor residual, Tensor weight, float eps) -> Tensor[]"),
           ("rope_", "rope_(Tensor(a!) qkv, Tensor cos, Tensor sin, int rotated_heads, int head_dim) -> ()"),
           ("silu_and_mul", "silu_and_mul(Tensor gate_up) -> Tensor"),
           ("argmax_rows", "argmax_rows(Tensor x) -> Tensor"))


@functools.cache
def _ops():
    """The ops, in SCHEMAS order (cached without arguments: called once per op on the hot path)."""
    return bound_ops("llm_labs_cpu_ops", CPP_SOURCE, SCHEMAS)


@functools.cache
def cpu_ops_available() -> bool:
    """True when the kernels build and load here (a C++ compiler is found). Logged once if not.

    定义于 第11章 §11.7
    """
    return cpu_extension_available("llm_labs_cpu_ops", CPP_SOURCE, SCHEMAS, "layers run eager ops")


def use_cpu_ops(x: torch.Tensor) -> bool:
    """Whether the fused kernels apply to this activation: bf16 on CPU, kernels built, not under autograd, not
    being traced by torch.compile (inductor fuses these ops itself).

    定义于 第11章 §11.7
    """
    return (x.dtype == torch.bfloat16 and x.device.type == "cpu" and not torch.is_grad_enabled()
            and not torch.compiler.is_compiling() and cpu_ops_available())


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """weight * bf16(x * rsqrt(mean(x^2) + eps)), one pass per row.

    定义于 第11章 §11.7
    """
    return _ops()[0](x.contiguous(), weight, eps)


def add_rms_norm(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor,
                 eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(h, rms_norm(h)) with h = residual + x: the layer's residual add fused with the next norm.

    定义于 第11章 §11.7
    """
    h, y = _ops()[1](x.contiguous(), residual.contiguous(), weight, eps)
    return h, y


def rope_(qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, rotated_heads: int, head_dim: int) -> None:
    """RoPE in place on the first `rotated_heads` heads of a packed [B, T, (Hq + 2 Hkv) * D] projection;
    cos/sin [T, D] (one position row for every sequence of the batch).

    定义于 第11章 §11.7
    """
    _ops()[2](qkv, cos.contiguous(), sin.contiguous(), rotated_heads, head_dim)


def silu_and_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up of a packed [..., 2I] gate/up projection.

    定义于 第11章 §11.7
    """
    return _ops()[3](gate_up)


def argmax_rows(x: torch.Tensor) -> torch.Tensor:
    """torch.argmax(x, -1) of bf16 logits [rows, vocab] without their fp32 copy: greedy decoding's token ids.

    定义于 第11章 §11.7
    """
    return _ops()[4](x.contiguous())
