"""Build the repo's small C++ CPU kernels once per machine, and say clearly when a machine cannot.

`load_cpu_extension` compiles a source string (after `PRELUDE`, the vector helpers every kernel shares) with
`torch.utils.cpp_extension.load_inline` into
.cache/torch_extensions/<name> (tens of seconds the first time; later processes load the cached library
in milliseconds). Flags: -O3 and -march=native (this CPU's vector units: AVX-512 and AVX512-BF16 here),
and -fopenmp so `at::parallel_for` in the kernels runs on torch's threads; without it the kernels would
run on one core.
"""
from __future__ import annotations

import functools
import logging
import shutil

import torch

from .paths import CACHE_DIR

logger = logging.getLogger(__name__)

CFLAGS = ["-O3", "-march=native", "-fopenmp"]
LDFLAGS = ["-lgomp"]   # the OpenMP runtime -fopenmp compiles against

# Included at the top of every kernel source: bf16 <-> fp32 and exp on 16 floats at a time (AVX-512), and the
# scalar bf16 row loader. Rounding to bf16 is round-to-nearest-even, as PyTorch's bf16 ops round.
PRELUDE = r"""
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <algorithm>
#include <cmath>
#include <cstring>
#include <type_traits>
#include <vector>
#ifdef __AVX512F__
#include <immintrin.h>
#endif

// bf16 -> fp32 is a 16-bit shift: written out so the compiler vectorises the row conversion.
static inline void load_row(const at::BFloat16* src, float* dst, int64_t n) {
  const uint16_t* s = reinterpret_cast<const uint16_t*>(src);
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    uint32_t bits = static_cast<uint32_t>(s[i]) << 16;
    float f; std::memcpy(&f, &bits, 4); dst[i] = f;
  }
}
static inline void load_row(const float* src, float* dst, int64_t n) { std::memcpy(dst, src, n * sizeof(float)); }

#ifdef __AVX512F__
static inline __m512 load_bf16x16(const at::BFloat16* p) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i*)p)), 16));
}
// fp32 -> the bf16 bits, round to nearest even (finite values)
static inline __m256i bf16_bits(__m512 v) {
  __m512i b = _mm512_castps_si512(v);
  __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(b, 16), _mm512_set1_epi32(1));
  b = _mm512_add_epi32(b, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7fff)));
  return _mm512_cvtepi32_epi16(_mm512_srli_epi32(b, 16));
}
static inline void store_bf16x16(at::BFloat16* p, __m512 v) { _mm256_storeu_si256((__m256i*)p, bf16_bits(v)); }
// v rounded to bf16 and widened back: what an eager bf16 op leaves between two ops
static inline __m512 round_bf16(__m512 v) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(bf16_bits(v)), 16));
}
// Sums of 16 vectors at once: r[j] = sum of s[j]'s 16 floats, by a shuffle tree (46 instructions instead of 16
// separate horizontal reductions). Vectors past `n` must be zero.
static inline __m512 hsum16(const __m512* s) {
  __m512 u[8], w[4];
  for (int j = 0; j < 8; ++j)    // lanes 0-1: partial sums of s[j]; lanes 2-3: of s[j + 8]
    u[j] = _mm512_add_ps(_mm512_shuffle_f32x4(s[j], s[j + 8], 0x44), _mm512_shuffle_f32x4(s[j], s[j + 8], 0xEE));
  for (int j = 0; j < 4; ++j)    // lane 0: s[j], lane 1: s[j + 8], lane 2: s[j + 4], lane 3: s[j + 12]
    w[j] = _mm512_add_ps(_mm512_shuffle_f32x4(u[j], u[j + 4], 0x88), _mm512_shuffle_f32x4(u[j], u[j + 4], 0xDD));
  __m512 x0 = _mm512_add_ps(_mm512_unpacklo_ps(w[0], w[1]), _mm512_unpackhi_ps(w[0], w[1]));
  __m512 x1 = _mm512_add_ps(_mm512_unpacklo_ps(w[2], w[3]), _mm512_unpackhi_ps(w[2], w[3]));
  __m512 y = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(x0), _mm512_castps_pd(x1))),
                           _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(x0), _mm512_castps_pd(x1))));
  return _mm512_shuffle_f32x4(y, y, 0xD8);   // lanes (0, 2, 1, 3): r[0..3], r[4..7], r[8..11], r[12..15]
}
// exp(x) = 2^k * 2^f with k = round(x / ln 2): a degree-6 polynomial for 2^f on [-0.5, 0.5] (rel. error ~1e-7)
static inline __m512 exp16(__m512 x) {
  const float c[7] = {1.f, 0.6931471806f, 0.2402265070f, 0.0555041087f, 0.0096181291f, 0.0013333558f, 0.0001540353f};
  __m512 y = _mm512_mul_ps(_mm512_max_ps(_mm512_min_ps(x, _mm512_set1_ps(88.f)), _mm512_set1_ps(-87.f)),
                           _mm512_set1_ps(1.4426950408889634f));
  __m512 k = _mm512_roundscale_ps(y, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 f = _mm512_sub_ps(y, k), p = _mm512_set1_ps(c[6]);
  for (int j = 5; j >= 0; --j) p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(c[j]));
  return _mm512_scalef_ps(p, k);
}
#endif
"""


NAMESPACE = "llm_labs_kernels"   # torch.ops.llm_labs_kernels.<op>


@functools.cache
def load_cpu_extension(name: str, source: str, schemas: tuple[tuple[str, str], ...]) -> None:
    """Build (first call on a machine) or load the library `name` and register its C++ functions as torch ops.

    schemas: (C++ function, op schema) pairs, e.g. ("rms_norm", "rms_norm(Tensor x, Tensor weight, float eps)
    -> Tensor"). Registered with TORCH_LIBRARY_FRAGMENT, each becomes `torch.ops.llm_labs_kernels.<op>`: called
    through the dispatcher like an aten op (about a microsecond), so torch.profiler shows it by name.

    本书无对应章节（工具）
    """
    from torch.utils.cpp_extension import load_inline

    registrations = "\n".join(f'  m.def("{schema}", &{function});' for function, schema in schemas)
    library = f"\nTORCH_LIBRARY_FRAGMENT({NAMESPACE}, m) {{\n{registrations}\n}}\n"
    build_dir = CACHE_DIR / "torch_extensions" / name
    build_dir.mkdir(parents=True, exist_ok=True)
    load_inline(name=name, cpp_sources=PRELUDE + source + library, extra_cflags=CFLAGS, extra_ldflags=LDFLAGS,
                build_directory=str(build_dir), is_python_module=False)


@functools.cache
def bound_ops(name: str, source: str, schemas: tuple[tuple[str, str], ...]) -> tuple:
    """The library's ops as bound overloads (`torch.ops.llm_labs_kernels.<op>.default`, the fastest way to call a
    dispatcher op from Python), in the order of `schemas`; builds or loads the library first.

    本书无对应章节（工具）
    """
    load_cpu_extension(name, source, schemas)
    namespace = getattr(torch.ops, NAMESPACE)
    return tuple(getattr(namespace, schema.split("(", 1)[0]).default for _, schema in schemas)


def cpu_extension_available(name: str, source: str, schemas: tuple[tuple[str, str], ...], fallback: str) -> bool:
    """Whether the library builds and loads here; if not, log once why and what runs instead (`fallback`).

    本书无对应章节（工具）
    """
    if shutil.which("c++") is None and shutil.which("g++") is None:
        logger.warning("no C++ compiler for %s: %s", name, fallback)
        return False
    try:
        load_cpu_extension(name, source, schemas)
    except Exception as exc:   # a broken toolchain must not stop the model: report it and use the eager path
        logger.warning("%s unavailable (%s): %s", name, exc, fallback)
        return False
    return True


def build_all() -> dict[str, bool]:
    """Build (or load) every kernel of the repo: `make setup` runs this so no notebook pays the first build.

    本书无对应章节（工具）
    """
    from .model.cpu_layer import cpu_layer_available
    from .model.cpu_ops import cpu_ops_available
    from .model.packed_gemm import packed_gemm_available
    from .paged.decode_attention import decode_kernel_available

    return {"fused layer kernels (common.model.cpu_ops)": cpu_ops_available(),
            "bf16 GEMM for the serving linears (common.model.packed_gemm)": packed_gemm_available(),
            "a layer in two calls (common.model.cpu_layer)": cpu_layer_available(),
            "paged decode attention (common.paged.decode_attention)": decode_kernel_available()}


if __name__ == "__main__":
    for what, ok in build_all().items():
        print(f"[setup] C++ {what}: {'built' if ok else 'unavailable, eager fallback (see the warning above)'}")
