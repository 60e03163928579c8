"""A bf16 matrix-vector kernel for the serving layout's linears at batch 1-2: each weight byte read once, at
the memory bandwidth.

Why: a decode step at batch 1 multiplies one activation row by every weight of the model (269 MB in bf16 for
SmolLM2-135M), so its floor is the weight bytes over the memory bandwidth, not FLOPs. Over weights larger than the
caches, oneDNN's bf16 GEMM (tuned for many rows) streams them at about 30-36 GB/s at M = 1 on the repo's 2-core
CPU; this kernel streams them at the machine's read bandwidth, about 40 GB/s there
(`common.hardware.machine.measure_memory_bandwidth(kind="read")`); `make bench` shows the step-level effect. It is
what llama.cpp's small-batch path does: a dot product per output row, many rows at once.

How: the weight stays in its plain row-major [N, K] layout. Each work item is 16 output rows; for each
activation row it walks K in 32-element steps with the AVX512-BF16 dot-product instruction (exact bf16
products, fp32 sums) into 16 accumulators, then reduces the 16 at once with the shuffle tree `hsum16` and
rounds once to bf16 (as oneDNN rounds its fp32 sum). The 16-row items are spread over torch's threads with
`at::parallel_for`. A second activation row re-reads the 16 rows from L1, not memory.

Outputs equal F.linear's up to the order of the fp32 sum (tests/test_gemv.py: within half a bf16 step of an fp32
reference, plus the summation-order error). CPUs without AVX512-BF16, and more than `GEMV_MAX_ROWS` rows, keep oneDNN.
"""
from __future__ import annotations

import functools

import torch

from ..cpp_extension import bound_ops, cpu_extension_available

GEMV_MAX_ROWS = 2   # measured on this CPU: at M = 4 oneDNN's blocked GEMM wins on the MLP's up projection

CPP_SOURCE = r"""
bool gemv_supported() {
#if defined(__AVX512F__) && defined(__AVX512BF16__)
  return true;
#else
  return false;
#endif
}

#if defined(__AVX512F__) && defined(__AVX512BF16__)
// acc[r] = 16 partial sums of x . w[r] for the `rows` (<= 16) rows at w; rows past `rows` stay zero. Whole 32-element
// steps load unmasked (the hot loop); a K tail loads masked with zeros.
static inline void dot_16_rows(const uint16_t* x, const uint16_t* w, int64_t K, int rows, __m512* acc) {
  for (int r = 0; r < 16; ++r) acc[r] = _mm512_setzero_ps();
  const int64_t whole = K / 32 * 32;
  if (rows == 16) {   // the constant bound lets the compiler unroll and keep the 16 accumulators in registers
    for (int64_t k = 0; k < whole; k += 32) {
      const __m512bh xv = (__m512bh)_mm512_loadu_si512(x + k);
      for (int r = 0; r < 16; ++r) acc[r] = _mm512_dpbf16_ps(acc[r], xv, (__m512bh)_mm512_loadu_si512(w + r * K + k));
    }
  } else {
    for (int64_t k = 0; k < whole; k += 32) {
      const __m512bh xv = (__m512bh)_mm512_loadu_si512(x + k);
      for (int r = 0; r < rows; ++r)
        acc[r] = _mm512_dpbf16_ps(acc[r], xv, (__m512bh)_mm512_loadu_si512(w + r * K + k));
    }
  }
  if (whole < K) {
    const __mmask32 tail = static_cast<__mmask32>((1ull << (K - whole)) - 1);
    const __m512bh xv = (__m512bh)_mm512_maskz_loadu_epi16(tail, x + whole);
    for (int r = 0; r < rows; ++r)
      acc[r] = _mm512_dpbf16_ps(acc[r], xv, (__m512bh)_mm512_maskz_loadu_epi16(tail, w + r * K + whole));
  }
}
#endif

// y [M, N] = x [M, K] @ w [N, K]^T, bf16 in and out, fp32 sums.
torch::Tensor gemv_bf16(torch::Tensor x, torch::Tensor w) {
  TORCH_CHECK(gemv_supported(), "gemv_bf16 needs AVX512-BF16");
  TORCH_CHECK(x.device().is_cpu() && w.device().is_cpu() && x.scalar_type() == torch::kBFloat16 &&
              w.scalar_type() == torch::kBFloat16 && x.is_contiguous() && w.is_contiguous() && w.dim() == 2,
              "gemv_bf16 takes contiguous bf16 CPU tensors x [..., K] and w [N, K]");
  const int64_t K = x.size(-1), N = w.size(0);
  TORCH_CHECK(w.size(1) == K, "x has ", K, " features but w has ", w.size(1));
  const int64_t M = K ? x.numel() / K : 0;
  auto sizes = x.sizes().vec(); sizes.back() = N;
  auto y = torch::empty(sizes, x.options());
#if defined(__AVX512F__) && defined(__AVX512BF16__)
  const uint16_t* xp = reinterpret_cast<const uint16_t*>(x.data_ptr<at::BFloat16>());
  const uint16_t* wp = reinterpret_cast<const uint16_t*>(w.data_ptr<at::BFloat16>());
  uint16_t* yp = reinterpret_cast<uint16_t*>(y.data_ptr<at::BFloat16>());
  at::parallel_for(0, (N + 15) / 16, 1, [&](int64_t begin, int64_t end) {
    for (int64_t item = begin; item < end; ++item) {
      const int64_t n0 = item * 16;
      const int rows = static_cast<int>(std::min<int64_t>(16, N - n0));
      for (int64_t m = 0; m < M; ++m) {
        __m512 acc[16];
        dot_16_rows(xp + m * K, wp + n0 * K, K, rows, acc);
        _mm256_mask_storeu_epi16(yp + m * N + n0, static_cast<__mmask16>((1u << rows) - 1),
                                 (__m256i)_mm512_cvtneps_pbh(hsum16(acc)));   // round to nearest even
      }
    }
  });
#endif
  return y;
}
"""

SCHEMAS = (("gemv_supported", "gemv_supported() -> bool"),
           ("gemv_bf16", "gemv_bf16(Tensor x, Tensor w) -> Tensor"))


@functools.cache
def gemv_available() -> bool:
    """True when the kernel builds here and this CPU has AVX512-BF16. Logged once if it does not build.

    定义于 第11章 §11.7
    """
    if not cpu_extension_available("llm_labs_gemv", CPP_SOURCE, SCHEMAS, "small-batch linears run oneDNN"):
        return False
    return bool(_ops()[0]())


@functools.cache
def _ops():
    """(gemv_supported, gemv_bf16), in SCHEMAS order (cached without arguments: called per linear on the hot path)."""
    return bound_ops("llm_labs_gemv", CPP_SOURCE, SCHEMAS)


def gemv(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """x [..., K] @ weight[N, K]^T for bf16 CPU tensors (F.linear without bias), reading the weight once.

    定义于 第11章 §11.7
    """
    return _ops()[1](x.contiguous(), weight)
