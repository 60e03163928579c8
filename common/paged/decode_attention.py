"""Decode attention over paged K/V, two ways: gather + two matmuls (any device), or one C++ loop (CPU).

`decode_attention` is the portable path: the store first gathers every decode's pages into a contiguous
buffer (`index_select`), then two batched matmuls run over it. K and V cross memory three times (read,
write the copy, read the copy), plus the score tensor's masking and softmax passes, and at decode every
one of those bytes is memory-bound. `paged_decode_attention` follows each sequence's block table and
reads every K and V row once, straight from the head-major store, which is what vLLM's PagedAttention
kernels (CUDA and CPU) do.

One work item is one (kv head, sequence) pair, spread over threads with `at::parallel_for`: the G query
heads of the GQA group share each K/V row read. For each item: scores = q·k for every cached token (fp32),
softmax over them, then the weighted sum of the V rows. Math is fp32 whatever the storage dtype (bf16 or
fp32), like the eager path's `.float()` scores.

The kernel is built once per machine by `common.cpp_extension.load_cpu_extension` (tens of seconds; then
cached) and registered as the torch op `torch.ops.llm_labs_kernels.paged_decode_attention` (torch.profiler
shows it by name).
`decode_kernel_available()` says whether this machine can use it (a CPU with a C++ compiler); elsewhere
(CUDA, no compiler) the store uses gather + matmuls. Both are checked against SDPA in
tests/test_paged_decode_attention.py.
"""
from __future__ import annotations

import functools

import torch

from ..cpp_extension import bound_ops, cpu_extension_available
from .paged_attention import check_paged_inputs

CPP_SOURCE = r"""
static inline float dot(const float* a, const float* b, int64_t n) {
#ifdef __AVX512F__
  if (n % 16 == 0) {
    __m512 s = _mm512_setzero_ps();
    for (int64_t i = 0; i < n; i += 16) s = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), s);
    return _mm512_reduce_add_ps(s);
  }
#endif
  float s = 0.f;
#pragma omp simd reduction(+ : s)
  for (int64_t i = 0; i < n; ++i) s += a[i] * b[i];
  return s;
}

// x[i] = exp(x[i] - shift) for i < n (x holds a multiple of 16 floats on the AVX-512 path); returns the sum.
static inline float exp_shifted(float* x, int64_t n, float shift) {
  float sum = 0.f;
  int64_t i = 0;
#ifdef __AVX512F__
  const __m512 sh = _mm512_set1_ps(shift);
  __m512 vsum = _mm512_setzero_ps();
  for (; i + 16 <= n; i += 16) {
    const __m512 p = exp16(_mm512_sub_ps(_mm512_loadu_ps(x + i), sh));   // -inf padding clamps to exp(-87) ~ 0
    _mm512_storeu_ps(x + i, p);
    vsum = _mm512_add_ps(vsum, p);
  }
  sum = _mm512_reduce_add_ps(vsum);
#endif
  for (; i < n; ++i) { x[i] = std::exp(x[i] - shift); sum += x[i]; }
  return sum;
}

#if defined(__AVX512F__) && defined(__AVX512BF16__)
#define LLM_LABS_BF16_D64 1
constexpr int64_t kPrefetchBlocks = 3;   // how far ahead pass 1 asks for K (measured: 1 is too late, 3-6 alike)
// Ask for `rows` rows of 64 bf16 (two cache lines each) ahead of use: a sequence's blocks are scattered over the
// pool, so the hardware prefetcher, which follows sequential streams, misses at every block boundary.
static inline void prefetch_rows(const at::BFloat16* p, int64_t rows) {
  const char* c = reinterpret_cast<const char*>(p);
  for (int64_t i = 0; i < rows * 128; i += 64) _mm_prefetch(c + i, _MM_HINT_T0);
}

// out[g] = inv[g] * sum_t p[g][t] v[t] (p unnormalised) over a sequence's V pages (head_dim 64), for the G
// query heads of one kv head. Each V row is widened from bf16 once and feeds all G heads, whose 4G accumulators
// stay in registers: 4G independent FMA chains per row (with 4 the chains' latency, not the FMA units, bounded it).
template <int G>
static void pv_pass(const at::BFloat16* v_head, const int32_t* table, int64_t len, int64_t block_size,
                    const float* scores, int64_t padded, const float* inv, at::BFloat16* out, int64_t out_stride) {
  __m512 acc[G][4];
  for (int g = 0; g < G; ++g)
    for (int i = 0; i < 4; ++i) acc[g][i] = _mm512_setzero_ps();
  for (int64_t t0 = 0; t0 < len; t0 += block_size) {
    const at::BFloat16* block = v_head + static_cast<int64_t>(table[t0 / block_size]) * block_size * 64;
    const int64_t n = std::min(block_size, len - t0);
    if (t0 + block_size < len)
      prefetch_rows(v_head + static_cast<int64_t>(table[t0 / block_size + 1]) * block_size * 64,
                    std::min(block_size, len - t0 - block_size));
    for (int64_t j = 0; j < n; ++j) {
      const at::BFloat16* row = block + j * 64;
      const __m512 v0 = load_bf16x16(row), v1 = load_bf16x16(row + 16), v2 = load_bf16x16(row + 32),
                   v3 = load_bf16x16(row + 48);
      for (int g = 0; g < G; ++g) {
        const __m512 pj = _mm512_set1_ps(scores[g * padded + t0 + j]);
        acc[g][0] = _mm512_fmadd_ps(pj, v0, acc[g][0]);
        acc[g][1] = _mm512_fmadd_ps(pj, v1, acc[g][1]);
        acc[g][2] = _mm512_fmadd_ps(pj, v2, acc[g][2]);
        acc[g][3] = _mm512_fmadd_ps(pj, v3, acc[g][3]);
      }
    }
  }
  for (int g = 0; g < G; ++g)
    for (int i = 0; i < 4; ++i)
      store_bf16x16(out + g * out_stride + 16 * i, _mm512_mul_ps(acc[g][i], _mm512_set1_ps(inv[g])));
}
// pv_pass for group sizes 1..8, indexed by group - 1
static void (*const kPvPass[8])(const at::BFloat16*, const int32_t*, int64_t, int64_t, const float*, int64_t,
                                const float*, at::BFloat16*, int64_t) = {
    pv_pass<1>, pv_pass<2>, pv_pass<3>, pv_pass<4>, pv_pass<5>, pv_pass<6>, pv_pass<7>, pv_pass<8>};

// One (kv head, sequence) item for bf16 pages with head_dim 64: q·k with the bf16 dot-product instruction
// (exact products, fp32 sums), 16 tokens per reduction tree; p·v in fp32 with the accumulators in registers.
static void item_bf16_d64(const at::BFloat16* q, int64_t q_stride, int64_t group, const at::BFloat16* k_head,
                          const at::BFloat16* v_head, const int32_t* table, int64_t len, int64_t block_size,
                          float scale, float* scores, int64_t padded, at::BFloat16* out,
                          int64_t out_stride) {
  const __m512 vscale = _mm512_set1_ps(scale);
  for (int64_t g = 0; g < group; ++g) {   // pass 1: scores
    const __m512bh q0 = (__m512bh)_mm512_loadu_si512(q + g * q_stride);
    const __m512bh q1 = (__m512bh)_mm512_loadu_si512(q + g * q_stride + 32);
    for (int64_t t0 = 0; t0 < len; t0 += block_size) {
      const at::BFloat16* block = k_head + static_cast<int64_t>(table[t0 / block_size]) * block_size * 64;
      const int64_t n_block = std::min(block_size, len - t0);
      if (g == 0) {   // the first query head streams K from memory: ask for K blocks ahead, and this block's V
        const int64_t ahead = t0 + kPrefetchBlocks * block_size;
        if (t0 == 0)
          for (int64_t a = block_size; a < std::min(ahead, len); a += block_size)
            prefetch_rows(k_head + static_cast<int64_t>(table[a / block_size]) * block_size * 64,
                          std::min(block_size, len - a));
        if (ahead < len)
          prefetch_rows(k_head + static_cast<int64_t>(table[ahead / block_size]) * block_size * 64,
                        std::min(block_size, len - ahead));
        prefetch_rows(v_head + static_cast<int64_t>(table[t0 / block_size]) * block_size * 64, n_block);
      }
      for (int64_t j0 = 0; j0 < n_block; j0 += 16) {
        __m512 s[16];
        const int64_t n = std::min<int64_t>(16, n_block - j0);
        for (int64_t j = 0; j < 16; ++j) {
          if (j < n) {
            const at::BFloat16* row = block + (j0 + j) * 64;
            s[j] = _mm512_dpbf16_ps(_mm512_dpbf16_ps(_mm512_setzero_ps(), q0, (__m512bh)_mm512_loadu_si512(row)),
                                    q1, (__m512bh)_mm512_loadu_si512(row + 32));
          } else {
            s[j] = _mm512_setzero_ps();
          }
        }
        _mm512_mask_storeu_ps(scores + g * padded + t0 + j0, (__mmask16)((1u << n) - 1),
                              _mm512_mul_ps(hsum16(s), vscale));
      }
    }
  }
  float inv[8];
  for (int64_t g = 0; g < group; ++g) {  // softmax per query head (the padding past len adds exp(-inf) = 0)
    float* sg = scores + g * padded;
    std::fill(sg + len, sg + padded, -INFINITY);
    __m512 vmax = _mm512_set1_ps(-INFINITY);
    for (int64_t t = 0; t < padded; t += 16) vmax = _mm512_max_ps(vmax, _mm512_loadu_ps(sg + t));
    inv[g] = 1.f / exp_shifted(sg, padded, _mm512_reduce_max_ps(vmax));   // applied to the output, not to each p
  }
  // pass 2 with the group's accumulators in registers
  kPvPass[group - 1](v_head, table, len, block_size, scores, padded, inv, out, out_stride);
}
#endif

// q [Hq, B, D]; k_cache, v_cache [Hkv, num_blocks, block_size, D] (one layer); block_tables [B, M] int32;
// lengths [B] int32 (cached tokens, the new one included). Writes out [Hq, B, D] in q's dtype.
template <typename T>
void decode_kernel(const T* q, const T* kc, const T* vc, const int32_t* tables, const int32_t* lengths, T* out,
                   int64_t hq, int64_t hkv, int64_t batch, int64_t dim, int64_t num_blocks, int64_t block_size,
                   int64_t max_blocks, float scale) {
  const int64_t group = hq / hkv;
  // Items (kv head, query row) in the order row 0, B-1, 1, B-2, ...: parallel_for hands each thread one contiguous
  // range, and a step's prefill rows grow in length (causal), so this pairs short rows with long ones.
  const auto row_of = [batch](int64_t item) {
    const int64_t i = item % batch;
    return i % 2 ? batch - 1 - i / 2 : i / 2;
  };
  at::parallel_for(0, hkv * batch, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> qf(group * dim), acc(group * dim), row(dim), scores;
    for (int64_t item = begin; item < end; ++item) {
      const int64_t h = item / batch, b = row_of(item), len = lengths[b];
      const int64_t padded = (len + 15) / 16 * 16;   // the exp loop runs in whole vectors
      const int32_t* table = tables + b * max_blocks;
      const T* k_head = kc + h * num_blocks * block_size * dim;
      const T* v_head = vc + h * num_blocks * block_size * dim;
#ifdef LLM_LABS_BF16_D64
      if constexpr (std::is_same_v<T, at::BFloat16>) {
        if (dim == 64 && group <= 8) {
          scores.resize(group * padded);
          if (item + 1 < end) {   // the next item's first K block, while this one computes
            const int64_t nb = row_of(item + 1);
            prefetch_rows(kc + ((item + 1) / batch * num_blocks + tables[nb * max_blocks]) * block_size * dim,
                          std::min<int64_t>(block_size, lengths[nb]));
          }
          item_bf16_d64(q + (h * group * batch + b) * dim, batch * dim, group, k_head, v_head, table, len, block_size,
                        scale, scores.data(), padded, out + (h * group * batch + b) * dim, batch * dim);
          continue;
        }
      }
#endif
      for (int64_t g = 0; g < group; ++g) {
        load_row(q + ((h * group + g) * batch + b) * dim, &qf[g * dim], dim);
        for (int64_t d = 0; d < dim; ++d) qf[g * dim + d] *= scale;
      }
      scores.assign(group * padded, -INFINITY);
      for (int64_t t0 = 0; t0 < len; t0 += block_size) {   // pass 1: one K row read serves the G query heads
        const T* block = k_head + static_cast<int64_t>(table[t0 / block_size]) * block_size * dim;
        for (int64_t t = t0; t < std::min(len, t0 + block_size); ++t) {
          load_row(block + (t - t0) * dim, row.data(), dim);
          for (int64_t g = 0; g < group; ++g) scores[g * padded + t] = dot(&qf[g * dim], row.data(), dim);
        }
      }
      for (int64_t g = 0; g < group; ++g) {  // softmax per query head
        float* sg = &scores[g * padded];
        const float mx = *std::max_element(sg, sg + len);
        const float inv = 1.f / exp_shifted(sg, padded, mx);
        for (int64_t t = 0; t < len; ++t) sg[t] *= inv;
      }
      std::fill(acc.begin(), acc.end(), 0.f);
      for (int64_t t0 = 0; t0 < len; t0 += block_size) {   // pass 2: one V row read serves the group
        const T* block = v_head + static_cast<int64_t>(table[t0 / block_size]) * block_size * dim;
        for (int64_t t = t0; t < std::min(len, t0 + block_size); ++t) {
          load_row(block + (t - t0) * dim, row.data(), dim);
          for (int64_t g = 0; g < group; ++g) {
            const float p = scores[g * padded + t];
            float* ag = &acc[g * dim];
#pragma omp simd
            for (int64_t d = 0; d < dim; ++d) ag[d] += p * row[d];
          }
        }
      }
      for (int64_t g = 0; g < group; ++g) {
        T* dst = out + ((h * group + g) * batch + b) * dim;
        for (int64_t d = 0; d < dim; ++d) dst[d] = static_cast<T>(acc[g * dim + d]);
      }
    }
  });
}

// Store each sequence's new k/v row [Hkv, B, D] (any strides) at its flat slot (block * block_size + offset) of
// the head-major caches: vLLM's reshape_and_cache, done in the attention call that reads it next.
template <typename T>
static void write_new_rows(const torch::Tensor& src, torch::Tensor& cache, const int64_t* slots) {
  const int64_t hkv = src.size(0), batch = src.size(1), dim = src.size(2);
  const int64_t per_head = cache.size(1) * cache.size(2);
  const T* s = src.template data_ptr<T>();
  T* c = cache.template data_ptr<T>();
  for (int64_t h = 0; h < hkv; ++h)
    for (int64_t b = 0; b < batch; ++b)
      std::memcpy(c + (h * per_head + slots[b]) * dim, s + h * src.stride(0) + b * src.stride(1), dim * sizeof(T));
}

torch::Tensor paged_decode_attention(torch::Tensor q, torch::Tensor k_cache, torch::Tensor v_cache,
                                     torch::Tensor block_tables, torch::Tensor lengths, double scale) {
  auto qc = q.contiguous();
  auto out = torch::empty_like(qc);
  const int64_t hq = q.size(0), batch = q.size(1), dim = q.size(2);
  const int64_t hkv = k_cache.size(0), num_blocks = k_cache.size(1), block_size = k_cache.size(2);
  const int64_t max_blocks = block_tables.size(1);
  auto tables = block_tables.contiguous();
  auto lens = lengths.contiguous();
  if (q.scalar_type() == torch::kBFloat16) {
    decode_kernel<at::BFloat16>(qc.data_ptr<at::BFloat16>(), k_cache.data_ptr<at::BFloat16>(),
                                v_cache.data_ptr<at::BFloat16>(), tables.data_ptr<int32_t>(), lens.data_ptr<int32_t>(),
                                out.data_ptr<at::BFloat16>(), hq, hkv, batch, dim, num_blocks, block_size, max_blocks,
                                static_cast<float>(scale));
  } else {
    decode_kernel<float>(qc.data_ptr<float>(), k_cache.data_ptr<float>(), v_cache.data_ptr<float>(),
                         tables.data_ptr<int32_t>(), lens.data_ptr<int32_t>(), out.data_ptr<float>(), hq, hkv, batch,
                         dim, num_blocks, block_size, max_blocks, static_cast<float>(scale));
  }
  return out;
}

// The decode step of one layer: write the B new k/v rows at `slots`, then attend (the rows just written included).
torch::Tensor paged_decode_write_attention(torch::Tensor q, torch::Tensor k, torch::Tensor v, torch::Tensor k_cache,
                                           torch::Tensor v_cache, torch::Tensor slots, torch::Tensor block_tables,
                                           torch::Tensor lengths, double scale) {
  TORCH_CHECK(k.sizes() == v.sizes() && k.dim() == 3 && k.size(0) == k_cache.size(0) && k.size(1) == q.size(1) &&
              k.size(2) == k_cache.size(3) && k.stride(2) == 1 && v.stride(2) == 1 && slots.numel() == k.size(1) &&
              k.scalar_type() == k_cache.scalar_type() && v.scalar_type() == k_cache.scalar_type() &&
              slots.scalar_type() == torch::kLong && slots.is_contiguous(),
              "k, v [Hkv, B, D] in the caches' dtype and slots [B] int64 must match q and the caches");
  const int64_t* slot = slots.data_ptr<int64_t>();
  for (auto [src, cache] : {std::pair{k, k_cache}, std::pair{v, v_cache}}) {
    if (cache.scalar_type() == torch::kBFloat16) write_new_rows<at::BFloat16>(src, cache, slot);
    else write_new_rows<float>(src, cache, slot);
  }
  return paged_decode_attention(q, k_cache, v_cache, block_tables, lengths, scale);
}
"""

SUPPORTED_DTYPES = (torch.bfloat16, torch.float32)


def decode_attention(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """One query token per sequence over its gathered pages, as two batched matmuls.

    q [Hq, B, D]; keys/values [Hkv, B, L, D] (L = padded pages); valid [B, L] (True = a real key).
    Returns [Hq, B, D]. GQA groups share their K/V without repeating them, and K is read through a
    transposed view, so nothing is copied between the gather and the matmuls. On CPU this is
    several times faster than SDPA with a mask for a single query (chapter 7, notebook 7).

    定义于 第6章 §6.3.2
    """
    hq, batch, dim = q.shape
    hkv = keys.shape[0]
    qg = q.view(hkv, hq // hkv, batch, dim).transpose(1, 2)                     # [Hkv, B, G, D]
    scores = torch.matmul(qg, keys.transpose(-1, -2)).float().mul_(dim ** -0.5)  # [Hkv, B, G, L]
    probs = scores.masked_fill_(~valid[None, :, None, :], float("-inf")).softmax(-1).to(values.dtype)
    return torch.matmul(probs, values).transpose(1, 2).reshape(hq, batch, dim)


SCHEMAS = (("paged_decode_attention", "paged_decode_attention(Tensor q, Tensor k_cache, Tensor v_cache, "
                                      "Tensor block_tables, Tensor lengths, float scale) -> Tensor"),
           ("paged_decode_write_attention", "paged_decode_write_attention(Tensor q, Tensor k, Tensor v, "
                                            "Tensor(a!) k_cache, Tensor(b!) v_cache, Tensor slots, "
                                            "Tensor block_tables, Tensor lengths, float scale) -> Tensor"))


@functools.cache
def _kernels():
    """(paged_decode_attention, paged_decode_write_attention), in SCHEMAS order."""
    return bound_ops("llm_labs_paged_decode", CPP_SOURCE, SCHEMAS)


@functools.cache
def decode_kernel_available() -> bool:
    """True when the C++ kernel builds and loads here (a C++ compiler is found). Logged once if not.

    定义于 第6章 §6.3.2
    """
    return cpu_extension_available("llm_labs_paged_decode", CPP_SOURCE, SCHEMAS, "decode uses gather + matmuls")


def check_decode_inputs(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                        block_tables: torch.Tensor, lengths: torch.Tensor) -> None:
    """Shapes, dtypes and ranges the kernel relies on; a mismatch is a ValueError, never a wrong read.

    定义于 第6章 §6.3.2
    """
    # the shapes and lengths are chapter 6's checks, on block-major views of the head-major caches
    check_paged_inputs(q.transpose(0, 1), k_cache.permute(1, 2, 0, 3), v_cache.permute(1, 2, 0, 3), block_tables,
                       lengths)
    num_blocks = k_cache.shape[1]
    if q.dtype not in SUPPORTED_DTYPES or k_cache.dtype != q.dtype or v_cache.dtype != q.dtype:
        raise ValueError(f"q and the caches must share one dtype of {SUPPORTED_DTYPES}, got {q.dtype}, "
                         f"{k_cache.dtype}, {v_cache.dtype}")
    if not (k_cache.is_contiguous() and v_cache.is_contiguous()) or q.device.type != "cpu":
        raise ValueError("the kernel reads contiguous CPU caches")
    if block_tables.dtype != torch.int32 or lengths.dtype != torch.int32:
        raise ValueError("block_tables and lengths must be int32")
    if block_tables.numel() and (block_tables.min() < 0 or block_tables.max() >= num_blocks):
        raise ValueError(f"block ids must be in [0, {num_blocks})")


def paged_decode_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                           block_tables: torch.Tensor, lengths: torch.Tensor, scale: float) -> torch.Tensor:
    """B query rows, each over its own paged K/V up to its length (one decoding sequence, or one prompt token):
    [Hq, B, D] in q's dtype (CPU, bf16 or fp32).

    q [Hq, B, D]; k_cache/v_cache [Hkv, num_blocks, block_size, D], one layer of a head-major store;
    block_tables [B, M] int32 (entries past a sequence's length must be valid ids and are never read); lengths [B]
    int32. The inputs are checked (`check_decode_inputs`); the engine's hot path (`KernelDecode`, whose
    tables it built itself) calls the op directly.

    定义于 第6章 §6.3.2
    """
    check_decode_inputs(q, k_cache, v_cache, block_tables, lengths)
    return _kernels()[0](q, k_cache, v_cache, block_tables, lengths, scale)


def padded_tables(tables: list[list[int]], dtype: torch.dtype = torch.long,
                  device: str | torch.device = "cpu") -> torch.Tensor:
    """Block tables as one [B, max blocks] tensor, short rows padded with block 0 (never read past a length).

    定义于 第6章 §6.3.2
    """
    width = max(len(t) for t in tables)
    return torch.tensor([t + [0] * (width - len(t)) for t in tables], dtype=dtype, device=device)


class GatherDecode:
    """A step's decode attention by gather + two matmuls: works with any store that has `write_rows` and
    `gather_rows` (the INT8 store quantizes while writing and dequantizes while gathering) on any device. Built once
    per step, called per layer: writes the decode tokens' new K/V, then attends.

    定义于 第6章 §6.3.2
    """

    def __init__(self, store, tables: list[list[int]], lengths: list[int], slots: list[int],
                 buffers: tuple[torch.Tensor, torch.Tensor]) -> None:
        device, bs = store.k_cache[0].device, store.block_size
        padded = padded_tables(tables, device=device)
        self.store, self.batch, self.buffers = store, len(tables), buffers
        self.slot_rows = store.slot_rows(torch.tensor(slots, device=device))
        self.rows = store.block_rows(padded)
        self.valid = (torch.arange(padded.shape[1] * bs, device=device)[None, :]
                      < torch.tensor(lengths, device=device)[:, None])

    def __call__(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        self.store.write_rows(layer, self.slot_rows, k, v)
        k, v = self.store.gather_rows(layer, self.rows, self.buffers)
        keys, values = k.view(k.shape[0], self.batch, -1, k.shape[-1]), v.view(v.shape[0], self.batch, -1, v.shape[-1])
        return decode_attention(q, keys, values, self.valid)


class KernelDecode:
    """A step's decode attention by `paged_decode_write_attention`: one C++ call per layer writes the decode tokens'
    K/V into the head-major pages and attends over them in place (CPU).

    定义于 第6章 §6.3.2
    """

    def __init__(self, store, tables: list[list[int]], lengths: list[int], slots: list[int]) -> None:
        self.store, self.scale = store, store.config.head_dim ** -0.5
        self.tables = padded_tables(tables, torch.int32)
        self.lengths = torch.tensor(lengths, dtype=torch.int32)
        self.slots = torch.tensor(slots, dtype=torch.long)

    def __call__(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        store = self.store
        return _kernels()[1](q, k, v, store.k_cache[layer], store.v_cache[layer], self.slots, self.tables,
                             self.lengths, self.scale)
