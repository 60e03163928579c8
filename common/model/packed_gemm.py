"""The bf16 GEMM behind the serving layout's linears: one kernel from batch-1 decode to a 2048-token prefill,
over a copy of each weight packed once, at load, in the order the AVX512-BF16 dot-product instruction reads it.

Why: a decode step multiplies a few activation rows (M = batch) by every weight of the model (269 MB in bf16 for
SmolLM2-135M). At M = 1-2 the floor is those bytes over the memory bandwidth; by M = 64 it is the FLOPs; in
between it is both, and a kernel reaches it only if it streams each weight byte once while the multiply units stay
busy. oneDNN's bf16 GEMM (what F.linear runs here) is tuned for many rows: on the repo's 2-core CPU it streams
weights at about 30-36 GB/s at M = 1 and runs M = 64 at roughly two thirds of its large-matrix rate. This kernel
keeps the weight stream and the arithmetic going together at every M (`make bench` shows the step-level effect;
tests/test_packed_gemm.py checks the numbers it computes).

How (the layout oneDNN and the VNNI/AMX kernels of vLLM-cpu use, written small):
* `pack_weight`: the weight [N, K] is cut into groups of 48 output columns (the last may have 16 or 32); each
  group is stored as [K/2][columns][2], so one 64-byte line holds 16 columns' (k, k+1) pairs, and a group is one
  contiguous stream the hardware prefetcher follows.
* `packed_gemm`: a register tile of up to 8 activation rows x 48 columns keeps 24 fp32 accumulators in registers.
  For each k pair it loads 3 weight lines and broadcasts each row's (x[k], x[k+1]) pair; `_mm512_dpbf16_ps`
  multiplies the bf16 pairs exactly and adds them in fp32. After the K loop every accumulator is rounded once to
  bf16 (round to nearest even, as oneDNN rounds its fp32 sum). The groups are spread over torch's threads
  (`at::parallel_for`); a group is read from memory by its first 8-row tile and from cache by the rest.

Outputs equal F.linear's up to the order of the fp32 sum: within half a bf16 step of an fp32 reference plus the
summation-order error. CPUs without AVX512-BF16, shapes the packing does not fit (N not a multiple of 16, odd K)
and fp32 or GPU weights keep F.linear.
"""
from __future__ import annotations

import functools

import torch

from ..cpp_extension import bound_ops, cpu_extension_available

GROUP_COLUMNS = 48   # output columns per packed group: 3 vectors of 16, the register tile's width (the C++
#                      kernel reads it; its switch covers tiles of 1-3 vectors)
COLUMN_MULTIPLE = 16  # a group's width must be whole 16-column vectors

CPP_SOURCE = f"constexpr int64_t kGroupColumns = {GROUP_COLUMNS};   // pack_weight's groups\n" + r"""
bool packed_gemm_supported() {
#if defined(__AVX512F__) && defined(__AVX512BF16__)
  return true;
#else
  return false;
#endif
}

#if defined(__AVX512F__) && defined(__AVX512BF16__)
// y[MT rows][16 NV columns] = x[MT rows][K] . group, `w` one packed group [K/2][16 NV][2]. The MT x NV accumulators
// (at most 24) stay in registers for the whole K loop.
template <int MT, int NV>
static inline void gemm_tile(const uint16_t* x, int64_t K, const uint16_t* w, uint16_t* y, int64_t N) {
  __m512 acc[MT][NV];
  for (int i = 0; i < MT; ++i)
    for (int j = 0; j < NV; ++j) acc[i][j] = _mm512_setzero_ps();
  for (int64_t p = 0; p < K / 2; ++p) {
    __m512bh wv[NV];
    for (int j = 0; j < NV; ++j) wv[j] = (__m512bh)_mm512_loadu_si512(w + (p * NV + j) * 32);
    for (int i = 0; i < MT; ++i) {
      int32_t pair;   // (x[2p], x[2p + 1]) as one 32-bit word, broadcast to the 16 lanes
      std::memcpy(&pair, x + i * K + 2 * p, sizeof pair);
      const __m512bh xv = (__m512bh)_mm512_set1_epi32(pair);
      for (int j = 0; j < NV; ++j) acc[i][j] = _mm512_dpbf16_ps(acc[i][j], xv, wv[j]);
    }
  }
  for (int i = 0; i < MT; ++i)
    for (int j = 0; j < NV; ++j)
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(y + i * N + j * 16), (__m256i)_mm512_cvtneps_pbh(acc[i][j]));
}

// Every row of x against one group: 8-row tiles, then the remaining rows in one smaller tile.
template <int NV>
static void gemm_group(const uint16_t* x, int64_t M, int64_t K, const uint16_t* w, uint16_t* y, int64_t N) {
  int64_t m = 0;
  for (; m + 8 <= M; m += 8) gemm_tile<8, NV>(x + m * K, K, w, y + m * N, N);
  x += m * K; y += m * N;
  switch (M - m) {
    case 7: gemm_tile<7, NV>(x, K, w, y, N); break;
    case 6: gemm_tile<6, NV>(x, K, w, y, N); break;
    case 5: gemm_tile<5, NV>(x, K, w, y, N); break;
    case 4: gemm_tile<4, NV>(x, K, w, y, N); break;
    case 3: gemm_tile<3, NV>(x, K, w, y, N); break;
    case 2: gemm_tile<2, NV>(x, K, w, y, N); break;
    case 1: gemm_tile<1, NV>(x, K, w, y, N); break;
    default: break;
  }
}
#endif

// y [..., N] = x [..., K] @ w^T for w [N, K] packed by pack_weight (groups of kGroupColumns); bf16 in/out, fp32 sums.
torch::Tensor packed_gemm(torch::Tensor x, torch::Tensor packed, int64_t N) {
  TORCH_CHECK(packed_gemm_supported(), "packed_gemm needs AVX512-BF16");
  TORCH_CHECK(x.device().is_cpu() && packed.device().is_cpu() && x.scalar_type() == torch::kBFloat16 &&
              packed.scalar_type() == torch::kBFloat16 && x.is_contiguous() && packed.is_contiguous() &&
              packed.dim() == 1 && x.dim() >= 1, "packed_gemm takes contiguous bf16 CPU tensors x [..., K] and a "
              "packed weight [N * K] (pack_weight)");
  const int64_t K = x.size(-1);
  TORCH_CHECK(N > 0 && N % 16 == 0 && K > 0 && K % 2 == 0 && packed.numel() == N * K, "a packed weight of ",
              packed.numel(), " elements does not fit N = ", N, " (a multiple of 16) and K = ", K, " (even)");
  const int64_t M = x.numel() / K;
  auto sizes = x.sizes().vec(); sizes.back() = N;
  auto y = torch::empty(sizes, x.options());
#if defined(__AVX512F__) && defined(__AVX512BF16__)
  const uint16_t* xp = reinterpret_cast<const uint16_t*>(x.data_ptr<at::BFloat16>());
  const uint16_t* wp = reinterpret_cast<const uint16_t*>(packed.data_ptr<at::BFloat16>());
  uint16_t* yp = reinterpret_cast<uint16_t*>(y.data_ptr<at::BFloat16>());
  at::parallel_for(0, (N + kGroupColumns - 1) / kGroupColumns, 1, [&](int64_t begin, int64_t end) {
    for (int64_t group = begin; group < end; ++group) {
      const int64_t n0 = group * kGroupColumns;
      const uint16_t* w = wp + n0 * K;   // groups before this one are full
      switch (std::min<int64_t>(kGroupColumns, N - n0) / 16) {
        case 3: gemm_group<3>(xp, M, K, w, yp + n0, N); break;
        case 2: gemm_group<2>(xp, M, K, w, yp + n0, N); break;
        default: gemm_group<1>(xp, M, K, w, yp + n0, N); break;
      }
    }
  });
#endif
  return y;
}
"""

SCHEMAS = (("packed_gemm_supported", "packed_gemm_supported() -> bool"),
           ("packed_gemm", "packed_gemm(Tensor x, Tensor packed, int out_features) -> Tensor"))


@functools.cache
def packed_gemm_available() -> bool:
    """True when the kernel builds here and this CPU has AVX512-BF16. Logged once if it does not build.

    定义于 第11章 §11.7
    """
    if not cpu_extension_available("llm_labs_packed_gemm", CPP_SOURCE, SCHEMAS, "bf16 linears run F.linear"):
        return False
    return bool(_ops()[0]())


@functools.cache
def _ops():
    """(packed_gemm_supported, packed_gemm), in SCHEMAS order (cached without arguments: called per linear)."""
    return bound_ops("llm_labs_packed_gemm", CPP_SOURCE, SCHEMAS)


def can_pack(weight: torch.Tensor) -> bool:
    """Whether `packed_gemm` can run this weight: bf16 on CPU, [N, K] with N a multiple of 16 and K even, and the
    kernel available here.

    定义于 第11章 §11.7
    """
    return (weight.device.type == "cpu" and weight.dtype == torch.bfloat16 and weight.dim() == 2
            and weight.shape[0] % COLUMN_MULTIPLE == 0 and weight.shape[1] % 2 == 0 and weight.shape[1] > 0
            and packed_gemm_available())


def pack_weight(weight: torch.Tensor) -> torch.Tensor:
    """weight [N, K] -> the flat packed copy `packed_gemm` reads: groups of GROUP_COLUMNS output columns (the last
    narrower), each stored [K/2][columns][2] (see the module docstring).

    定义于 第11章 §11.7
    """
    if not can_pack(weight):
        raise ValueError(f"cannot pack a {weight.dtype} {tuple(weight.shape)} weight on {weight.device}: "
                         f"needs bf16 on CPU, [N, K] with N a multiple of {COLUMN_MULTIPLE} and K even")
    n, k = weight.shape
    whole = n // GROUP_COLUMNS * GROUP_COLUMNS
    body = weight[:whole].reshape(whole // GROUP_COLUMNS, GROUP_COLUMNS, k // 2, 2).permute(0, 2, 1, 3)
    tail = weight[whole:].reshape(n - whole, k // 2, 2).transpose(0, 1)
    return torch.cat([body.reshape(-1), tail.reshape(-1)])


def packed_gemm(x: torch.Tensor, packed: torch.Tensor, out_features: int) -> torch.Tensor:
    """x [..., K] @ weight^T for the bf16 CPU weight [out_features, K] that `pack_weight` packed (F.linear without
    bias): [..., out_features] in bf16.

    定义于 第11章 §11.7
    """
    return _ops()[1](x.contiguous(), packed, out_features)
