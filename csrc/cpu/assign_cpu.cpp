// CPU executor: norms + split, the screen + rescore, the fp32 argmax epilogue, rotation and subtraction, threaded
// over rows and calling csrc/core for every number (the CUDA kernels call the same core code).
#include "cpu/assign_cpu.h"

#include <dlfcn.h>
#include <unistd.h>

#include <cerrno>

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define HERMES_AVX512_PATHS 1
#endif

namespace hermes {
namespace cpu {
namespace {

// torch's CPU GEMM runs on an OpenMP team whose threads spin for a while after each parallel region. Threads
// of our own started right after a torch GEMM compete with those spinning ones for the same cores (measured
// here: the screen ran 1.5-2x slower than alone). So when an OpenMP runtime is already loaded in the process
// (torch's libgomp, or Intel's or LLVM's, which export the same GOMP entry points), the row loops run on its team
// through the GOMP ABI that `#pragma omp parallel` compiles to; hermes does not link an OpenMP runtime of
// its own (a second runtime would be a second set of spinning threads). Otherwise: std::thread.
struct OmpTeam {
  const char* lib = nullptr;
  void (*parallel)(void (*)(void*), void*, unsigned, unsigned) = nullptr;  // GOMP_parallel
  int (*thread_num)() = nullptr;                                           // omp_get_thread_num
  int (*num_threads)() = nullptr;                                          // omp_get_num_threads
};

const OmpTeam* omp_team() {
  static std::atomic<const OmpTeam*> found{nullptr};
  static OmpTeam api;
  static std::mutex mu;
  if (const OmpTeam* t = found.load(std::memory_order_acquire)) return t;
  if (const char* v = std::getenv("HERMES_CPU_THREADS"); v != nullptr && std::strcmp(v, "std") == 0) return nullptr;
  std::lock_guard<std::mutex> lock(mu);
  if (const OmpTeam* t = found.load(std::memory_order_acquire)) return t;
  for (const char* lib : {"libgomp.so.1", "libiomp5.so", "libomp.so"}) {
    void* h = dlopen(lib, RTLD_NOW | RTLD_NOLOAD);  // only a runtime that is already loaded; never loads one
    if (h == nullptr) continue;
    OmpTeam a;
    a.lib = lib;
    a.parallel = reinterpret_cast<decltype(a.parallel)>(dlsym(h, "GOMP_parallel"));
    a.thread_num = reinterpret_cast<decltype(a.thread_num)>(dlsym(h, "omp_get_thread_num"));
    a.num_threads = reinterpret_cast<decltype(a.num_threads)>(dlsym(h, "omp_get_num_threads"));
    if (a.parallel != nullptr && a.thread_num != nullptr && a.num_threads != nullptr) {
      api = a;
      found.store(&api, std::memory_order_release);
      return &api;
    }
  }
  return nullptr;  // not cached: torch may load its runtime later
}

// Splits [0, n) into contiguous chunks, one per thread; runs inline for small n or one thread.
template <class F>
void parallel_rows(int64_t n, int nthreads, F&& fn) {
  if (n <= 0) return;
  const int64_t t = std::max<int64_t>(1, std::min<int64_t>(nthreads, (n + 63) / 64));
  if (t == 1) {
    fn(int64_t{0}, n);
    return;
  }
  const int64_t chunk = (n + t - 1) / t;
  if (const OmpTeam* omp = omp_team()) {
    struct Ctx {
      F* fn;
      const OmpTeam* omp;
      int64_t n, t, chunk;
    } ctx{&fn, omp, n, t, chunk};
    omp->parallel(
        [](void* p) {
          const Ctx& c = *static_cast<const Ctx*>(p);
          // The team may be smaller than asked for (nesting, thread limits): threads take chunks round-robin.
          for (int64_t i = c.omp->thread_num(); i < c.t; i += c.omp->num_threads()) {
            const int64_t lo = i * c.chunk, hi = std::min(c.n, lo + c.chunk);
            if (lo < hi) (*c.fn)(lo, hi);
          }
        },
        &ctx, static_cast<unsigned>(t), 0u);
    return;
  }
  std::vector<std::thread> pool;
  pool.reserve(static_cast<size_t>(t - 1));
  for (int64_t i = 1; i < t; ++i) {
    int64_t lo = i * chunk, hi = std::min(n, lo + chunk);
    if (lo < hi) pool.emplace_back([&fn, lo, hi] { fn(lo, hi); });
  }
  fn(int64_t{0}, std::min(n, chunk));
  for (auto& th : pool) th.join();
}

// Hot row loops get x86-64-v3/v4 clones (FMA, AVX2/AVX-512) picked at load time, so fmaf is one
// instruction there; the default clone keeps the wheel portable. Rounding is the same in every clone.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && defined(__linux__)
#define HERMES_CPU_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define HERMES_CPU_CLONES
#endif

// IEEE half -> float (exact). GCC 12 does not vectorize _Float16 conversions (its x86-64-v3/v4 clones convert
// one element per vcvtph2ps), so the vector forms below are written out: 16 (AVX-512F) or 8 (F16C) per
// instruction (one thread on Zen 4: the float16 norms pass 579-767 -> 266-389 ns/row). This scalar loop is the portable fallback and does the tails; its x86-64-v3/v4
// clones convert one element per vcvtph2ps (the default clone calls libgcc's software conversion, 10x slower).
HERMES_CPU_CLONES
void half_to_float_scalar(const _Float16* in, int64_t n, float* out) {
  for (int64_t i = 0; i < n; ++i) out[i] = static_cast<float>(in[i]);
}

#ifdef HERMES_AVX512_PATHS
__attribute__((target("avx512f"))) void half_to_float_avx512(const _Float16* in, int64_t n, float* out) {
  int64_t i = 0;
  // The zero-masking form with an all-ones mask: GCC 12's _mm512_cvtph_ps passes _mm512_undefined_ps(), which
  // trips -Wmaybe-uninitialized at -O2.
  for (; i + 16 <= n; i += 16)
    _mm512_storeu_ps(out + i, _mm512_maskz_cvtph_ps(static_cast<__mmask16>(0xffff),
                                                    _mm256_loadu_si256(reinterpret_cast<const __m256i*>(in + i))));
  half_to_float_scalar(in + i, n - i, out + i);
}

__attribute__((target("avx,f16c"))) void half_to_float_f16c(const _Float16* in, int64_t n, float* out) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    _mm256_storeu_ps(out + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(in + i))));
  half_to_float_scalar(in + i, n - i, out + i);
}
#endif

enum class HalfPath { kScalar, kF16c, kAvx512 };
HalfPath half_path();  // below, next to use_avx512

void half_to_float(const _Float16* in, int64_t n, float* out) {
#ifdef HERMES_AVX512_PATHS
  static const HalfPath path = half_path();
  if (path == HalfPath::kAvx512) return half_to_float_avx512(in, n, out);
  if (path == HalfPath::kF16c) return half_to_float_f16c(in, n, out);
#endif
  half_to_float_scalar(in, n, out);
}

// bfloat16 -> float: the bits shifted into the high half (exact).
HERMES_CPU_CLONES
void bf16_to_float_row(const uint16_t* in, int64_t n, float* out) {
  for (int64_t i = 0; i < n; ++i) out[i] = core::bf16_to_float(in[i]);
}

// Row r of x as float32: float32 rows in place; float16 / bfloat16 rows converted (exactly) into buf [d], so
// reduced-precision input is read once, row by row, with no float32 copy of the batch.
const float* f32_row(const core::Rows& x, int64_t r, float* buf) {
  if (x.dtype == core::kF32) return static_cast<const float*>(x.data) + r * x.ld;
  if (x.dtype == core::kF16)
    half_to_float(static_cast<const _Float16*>(x.data) + r * x.ld, x.d, buf);
  else
    bf16_to_float_row(static_cast<const uint16_t*>(x.data) + r * x.ld, x.d, buf);
  return buf;
}

// A row converted on first use: the screen needs x itself only to rescore, which most rows never do.
struct LazyRow {
  const core::Rows* x;
  int64_t r;
  float* buf;
  const float* p = nullptr;
  const float* get() {
    if (p == nullptr) p = f32_row(*x, r, buf);
    return p;
  }
};

// The 32 lane partials of the warp-order reduction: element i goes to lane i % 32.
HERMES_CPU_CLONES
void lane_partials(const float* xr, const float* wr, int64_t d, float* xx, float* wx) {
  int64_t i0 = 0;
  for (; i0 + core::kWarp <= d; i0 += core::kWarp)
    for (int lane = 0; lane < core::kWarp; ++lane) core::norm_step(xr[i0 + lane], wr[i0 + lane], xx[lane], wx[lane]);
  for (int lane = 0; i0 + lane < d; ++lane) core::norm_step(xr[i0 + lane], wr[i0 + lane], xx[lane], wx[lane]);
}

// corr[k] = sum_{j<l} T_jl[c_j, k] for every k, added in core::correction's order (0, then + T_0, + T_1, ...).
HERMES_CPU_CLONES
void corrections(const core::LevelParams& p, const int32_t* code_row, float* corr) {
  const int K = p.K;
  for (int k = 0; k < K; ++k) corr[k] = 0.0f;
  for (int j = 0; j < p.level; ++j) {
    if (p.T[j] == nullptr) continue;
    const float* t = p.T[j] + static_cast<int64_t>(code_row[j]) * K;
    for (int k = 0; k < K; ++k) corr[k] += t[k];
  }
}

// One row of one level: the corrections in core order (0, then + T_0, + T_1, ...), the scores, the argmax.
HERMES_CPU_CLONES
int32_t level_row(const core::LevelParams& p, const float* gr, float inv_s, const int32_t* code_row, float* buf) {
  const int K = p.K;
  corrections(p, code_row, buf);
  if (p.metric == core::kL2) {
    for (int k = 0; k < K; ++k)
      buf[k] = core::score_from_parts(gr[k], p.beta ? p.beta[k] : 0.0f, inv_s, buf[k], p.cterm[k], core::kL2);
  } else {
    for (int k = 0; k < K; ++k)
      buf[k] = core::score_from_parts(gr[k], p.beta ? p.beta[k] : 0.0f, inv_s, buf[k], p.cterm[k], core::kCos);
  }
  core::Best best = core::best_init();
  for (int k = 0; k < K; ++k) core::best_update(best, buf[k], k);
  return best.index;
}

// The rescoring's dot product in core order (core/screen.h): 64 lane partials, then the halving tree. The
// lanes are independent, so the x86-64-v3/v4 clones vectorize it without changing a bit.
HERMES_CPU_CLONES
float dot_core(const float* __restrict a, const float* __restrict b, int64_t d) {
  float acc[core::kDotLanes] = {0};
  int64_t i0 = 0;
  for (; i0 + core::kDotLanes <= d; i0 += core::kDotLanes)
    for (int lane = 0; lane < core::kDotLanes; ++lane) acc[lane] = core::mul_add(a[i0 + lane], b[i0 + lane], acc[lane]);
  for (int lane = 0; i0 + lane < d; ++lane) acc[lane] = core::mul_add(a[i0 + lane], b[i0 + lane], acc[lane]);
  return core::dot_tree64(acc);
}

// max of lo[0..n) with NaN ignored (-inf when all are NaN): core::Bar's value, 16 lanes so it vectorizes
// (max is exact in any order; the index is found afterwards).
HERMES_CPU_CLONES
float bar_value(const float* v, int n) {
  float m[16];
  for (int j = 0; j < 16; ++j) m[j] = -INFINITY;
  int k0 = 0;
  for (; k0 + 16 <= n; k0 += 16)
    for (int j = 0; j < 16; ++j) m[j] = v[k0 + j] > m[j] ? v[k0 + j] : m[j];
  for (int j = 0; k0 + j < n; ++j) m[j] = v[k0 + j] > m[j] ? v[k0 + j] : m[j];
  float r = m[0];
  for (int j = 1; j < 16; ++j) r = m[j] > r ? m[j] : r;
  return r;
}

// One sweep over a row for the screen: core::norms_split_step per element in lane order (lane = i % 32),
// the bf16 bits stored. Local lane arrays and restrict pointers so the sweep vectorizes.
HERMES_CPU_CLONES
void norms_split_row(const float* __restrict xr, const float* __restrict wr, int64_t d, uint16_t* __restrict out,
                     float* __restrict xx, float* __restrict wx, float* __restrict hh, float* __restrict rr) {
  for (int j = 0; j < core::kWarp; ++j) xx[j] = wx[j] = hh[j] = rr[j] = 0.0f;
  int64_t i0 = 0;
  for (; i0 + core::kWarp <= d; i0 += core::kWarp)
    for (int lane = 0; lane < core::kWarp; ++lane)
      out[i0 + lane] = core::norms_split_step(xr[i0 + lane], wr[i0 + lane], xx[lane], wx[lane], hh[lane], rr[lane]);
  for (int lane = 0; i0 + lane < d; ++lane)
    out[i0 + lane] = core::norms_split_step(xr[i0 + lane], wr[i0 + lane], xx[lane], wx[lane], hh[lane], rr[lane]);
}

// The bracketing scores of one level (core::bracket per codeword). Separate restrict-qualified arrays so the
// loop vectorizes (with eight pointers in one loop the compiler gives up on its runtime alias checks).
template <int kMetric>
HERMES_CPU_CLONES void bracket_scores(const uint16_t* __restrict g16, int K, const float* __restrict mn,
                                      const float* __restrict dn, const float* __restrict beta,
                                      const float* __restrict corr, const float* __restrict cterm,
                                      core::Bound e, float inv_s, float* __restrict lo, float* __restrict hi) {
  for (int k = 0; k < K; ++k)
    core::bracket(core::bf16_to_float(g16[k]), mn[k], dn[k], beta[k], corr[k], cterm[k], e, inv_s, kMetric, lo[k],
                  hi[k]);
}

// bracket_scores with the corrections summed in the same loop, in core::correction's order (0, + T_0[c_0, k],
// + T_1[c_1, k]), for a level with kPrev (0, 1 or 2) earlier levels whose tables t0, t1 are all present: no corr
// array written and read back. The candidates' corrections are recomputed by core::correction (the same sums).
template <int kMetric, int kPrev>
HERMES_CPU_CLONES void bracket_scores_corr(const uint16_t* __restrict g16, int K, const float* __restrict mn,
                                           const float* __restrict dn, const float* __restrict beta,
                                           const float* __restrict t0, const float* __restrict t1,
                                           const float* __restrict cterm, core::Bound e, float inv_s,
                                           float* __restrict lo, float* __restrict hi) {
  for (int k = 0; k < K; ++k) {
    float corr = 0.0f;
    if (kPrev >= 1) corr = core::add(corr, t0[k]);
    if (kPrev >= 2) corr = core::add(corr, t1[k]);
    core::bracket(core::bf16_to_float(g16[k]), mn[k], dn[k], beta[k], corr, cterm[k], e, inv_s, kMetric, lo[k],
                  hi[k]);
  }
}

template <int kMetric>
void level_brackets(const core::LevelParams& p, const uint16_t* g16, const float* mn, const float* dn,
                    const int32_t* code_row, core::Bound e, float inv_s, float* corr, bool& have_corr, float* lo,
                    float* hi) {
  const int K = p.K;
  auto row_of = [&](int j) { return p.T[j] + static_cast<int64_t>(code_row[j]) * K; };
  have_corr = false;
  if (p.level == 0) {
    bracket_scores_corr<kMetric, 0>(g16, K, mn, dn, p.beta, nullptr, nullptr, p.cterm, e, inv_s, lo, hi);
  } else if (p.level == 1 && p.T[0] != nullptr) {
    bracket_scores_corr<kMetric, 1>(g16, K, mn, dn, p.beta, row_of(0), nullptr, p.cterm, e, inv_s, lo, hi);
  } else if (p.level == 2 && p.T[0] != nullptr && p.T[1] != nullptr) {
    bracket_scores_corr<kMetric, 2>(g16, K, mn, dn, p.beta, row_of(0), row_of(1), p.cterm, e, inv_s, lo, hi);
  } else {
    corrections(p, code_row, corr);
    have_corr = true;
    bracket_scores<kMetric>(g16, K, mn, dn, p.beta, corr, p.cterm, e, inv_s, lo, hi);
  }
}

// cand gets every k with core::is_candidate(hi[k], bar), in increasing k; returns how many. cand has room for
// K + 16 (the vector path stores whole compressed vectors: compress-to-memory is microcoded and slow on Zen 4).
int select_candidates_generic(const float* __restrict hi, int K, float bar, int32_t* __restrict cand) {
  int n = 0;
  for (int k = 0; k < K; ++k) {
    cand[n] = k;
    n += core::is_candidate(hi[k], bar) ? 1 : 0;
  }
  return n;
}

void rescore_generic(const float* x, const float* rows, int64_t d, const int32_t* cand, int n, float* g) {
  for (int i = 0; i < n; ++i) g[i] = dot_core(x, rows + cand[i] * d, d);
}

#ifdef HERMES_AVX512_PATHS
// core::dot_tree64's last six steps on one vector of 16 partials (o = 8, 4, 2, 1), through memory (GCC 12's
// _mm512_reduce_add_ps trips -Wmaybe-uninitialized in its header).
__attribute__((target("avx512f"))) float tree16(__m512 v) {
  alignas(64) float t[16];
  _mm512_store_ps(t, v);
  for (int o = 8; o > 0; o >>= 1)
    for (int i = 0; i < o; ++i) t[i] = t[i] + t[i + o];
  return t[0];
}

// bar_value on 16-lane vectors: vmaxps(v, m) is v > m ? v : m, so a NaN v keeps m, as in bar_value (which GCC
// leaves scalar); the lanes hold no NaN, so their max is exact in any order.
__attribute__((target("avx512f"))) float bar_value_avx512(const float* v, int n) {
  __m512 m = _mm512_set1_ps(-INFINITY);
  int k = 0;
  // The masked form with an all-ones mask: GCC 12's _mm512_max_ps passes _mm512_undefined_ps(), which trips
  // -Wmaybe-uninitialized at -O2.
  for (; k + 16 <= n; k += 16) m = _mm512_mask_max_ps(m, static_cast<__mmask16>(0xffff), _mm512_loadu_ps(v + k), m);
  if (k < n) {
    const __mmask16 tail = static_cast<__mmask16>((1u << (n - k)) - 1u);
    m = _mm512_mask_max_ps(m, tail, _mm512_maskz_loadu_ps(tail, v + k), m);
  }
  alignas(64) float t[16];
  _mm512_store_ps(t, m);
  float r = t[0];
  for (int j = 1; j < 16; ++j) r = t[j] > r ? t[j] : r;
  return r;
}

// core::is_candidate(hi, bar) is !(hi < bar): _CMP_NLT_UQ (true for NaN).
__attribute__((target("avx512f"))) int select_candidates_avx512(const float* __restrict hi, int K, float bar,
                                                                 int32_t* __restrict cand) {
  const __m512 lo = _mm512_set1_ps(bar);
  __m512i idx = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  const __m512i step = _mm512_set1_epi32(16);
  int n = 0, k = 0;
  for (; k + 16 <= K; k += 16) {
    const __mmask16 m = _mm512_cmp_ps_mask(_mm512_loadu_ps(hi + k), lo, _CMP_NLT_UQ);
    _mm512_storeu_si512(cand + n, _mm512_maskz_compress_epi32(m, idx));
    n += __builtin_popcount(m);
    idx = _mm512_add_epi32(idx, step);
  }
  if (k < K) {
    const __mmask16 tail = static_cast<__mmask16>((1u << (K - k)) - 1u);
    const __mmask16 m = _mm512_mask_cmp_ps_mask(tail, _mm512_maskz_loadu_ps(tail, hi + k), lo, _CMP_NLT_UQ);
    _mm512_storeu_si512(cand + n, _mm512_maskz_compress_epi32(m, idx));
    n += __builtin_popcount(m);
  }
  return n;
}

// Masks of the four 16-lane groups of a 64-element block that starts at i0 (all ones for a whole block).
__attribute__((target("avx512f"))) inline __mmask16 group_mask(int64_t i0, int q, int64_t d) {
  const int64_t left = d - i0 - 16 * q;
  return left >= 16 ? static_cast<__mmask16>(0xffff) : left <= 0 ? static_cast<__mmask16>(0)
                                                              : static_cast<__mmask16>((1u << left) - 1u);
}

// dot_core for four candidates per sweep over x (four memory streams in flight): candidate c's 64 lane
// partials are four vectors a[c][0..3] (partial i in vector i / 16, lane i % 16); the tail's masked lanes add
// 0 * 0, which leaves a partial unchanged (it is never -0: it starts at +0). Then the tree in core order:
// o = 32 adds vector 2 to 0 and 3 to 1, o = 16 adds 1 to 0, tree16 does the rest.
__attribute__((target("avx512f"))) void rescore_avx512(const float* x, const float* rows, int64_t d,
                                                        const int32_t* cand, int n, float* g) {
  const int64_t dv = d & ~int64_t{63};
  int i = 0;
  for (; i + 4 <= n; i += 4) {
    const float* r[4] = {rows + cand[i] * d, rows + cand[i + 1] * d, rows + cand[i + 2] * d, rows + cand[i + 3] * d};
    __m512 a[4][4];
    for (int c = 0; c < 4; ++c)
      for (int q = 0; q < 4; ++q) a[c][q] = _mm512_setzero_ps();
    for (int64_t j = 0; j < dv; j += 64)
      for (int q = 0; q < 4; ++q) {
        const __m512 xv = _mm512_loadu_ps(x + j + 16 * q);
        for (int c = 0; c < 4; ++c) a[c][q] = _mm512_fmadd_ps(xv, _mm512_loadu_ps(r[c] + j + 16 * q), a[c][q]);
      }
    if (dv < d)
      for (int q = 0; q < 4; ++q) {
        const __mmask16 m = group_mask(dv, q, d);
        const __m512 xv = _mm512_maskz_loadu_ps(m, x + dv + 16 * q);
        for (int c = 0; c < 4; ++c)
          a[c][q] = _mm512_fmadd_ps(xv, _mm512_maskz_loadu_ps(m, r[c] + dv + 16 * q), a[c][q]);
      }
    for (int c = 0; c < 4; ++c) {
      const __m512 h0 = _mm512_add_ps(a[c][0], a[c][2]), h1 = _mm512_add_ps(a[c][1], a[c][3]);
      g[i + c] = tree16(_mm512_add_ps(h0, h1));
    }
  }
  for (; i < n; ++i) g[i] = dot_core(x, rows + cand[i] * d, d);
}
#endif

}  // namespace

std::string thread_pool() {
  if (const OmpTeam* t = omp_team()) return std::string("OpenMP team of the already loaded ") + t->lib;
  return "std::thread";
}

// The vector paths need AVX-512F (or F16C for the half conversion) at run time. HERMES_CPU_ISA=generic turns
// them all off, HERMES_CPU_ISA=avx2 the AVX-512 ones (for tests, and for comparing the paths).
namespace {
const char* isa_env() {
  const char* isa = std::getenv("HERMES_CPU_ISA");
  return isa != nullptr ? isa : "";
}
}  // namespace

bool use_avx512() {
#ifdef HERMES_AVX512_PATHS
  static const bool ok = __builtin_cpu_supports("avx512f") && std::strcmp(isa_env(), "generic") != 0 &&
                         std::strcmp(isa_env(), "avx2") != 0;
  return ok;
#else
  return false;
#endif
}

namespace {
HalfPath half_path() {
#ifdef HERMES_AVX512_PATHS
  if (use_avx512()) return HalfPath::kAvx512;
  if (std::strcmp(isa_env(), "generic") != 0 && __builtin_cpu_supports("avx") && __builtin_cpu_supports("f16c"))
    return HalfPath::kF16c;
#endif
  return HalfPath::kScalar;
}
}  // namespace

std::string half_convert() {
  switch (half_path()) {
    case HalfPath::kAvx512: return "avx512";
    case HalfPath::kF16c: return "f16c";
    default: return "scalar";
  }
}

namespace {

float bar_of(const float* lo, int K) {
#ifdef HERMES_AVX512_PATHS
  if (use_avx512()) return bar_value_avx512(lo, K);
#endif
  return bar_value(lo, K);
}

int select_candidates(const float* hi, int K, float bar, int32_t* cand) {
#ifdef HERMES_AVX512_PATHS
  if (use_avx512()) return select_candidates_avx512(hi, K, bar, cand);
#endif
  return select_candidates_generic(hi, K, bar, cand);
}

void rescore(const float* x, const float* rows, int64_t d, const int32_t* cand, int n, float* g) {
#ifdef HERMES_AVX512_PATHS
  if (use_avx512()) return rescore_avx512(x, rows, d, cand, n, g);
#endif
  rescore_generic(x, rows, d, cand, n, g);
}

// The screen reads g16 (the GEMM's output, 1.5 KB a row at 3 x 256, tens of MB a batch: out of cache) one row
// at a time with a row's worth of work between the reads; perf put most of bracket_scores' samples on the g16
// load. So each row prefetches the row kScreenAhead rows on (Zen 4, interleaved A/B: about 10% off the
// screen's median time; prefetching x's rows as well, for the rescoring, was slower).
constexpr int64_t kScreenAhead = 2;

inline void prefetch_bytes(const void* p, int64_t bytes) {
  const char* c = static_cast<const char*>(p);
  for (int64_t o = 0; o < bytes; o += 64) __builtin_prefetch(c + o, 0, 3);
}

struct ScreenScratch {
  std::vector<float> corr, hi, lo, gbuf;
  std::vector<int32_t> cand;
  explicit ScreenScratch(int maxK)
      : corr(maxK), hi(maxK), lo(maxK), gbuf(maxK), cand(static_cast<size_t>(maxK) + 16) {}
};

// One row, all levels, screened, with the rule of core/screen.h: the bar (best lower bound, lowest index
// holding it), the candidates reaching it; one candidate wins unrescored; else the bar's codeword is rescored
// first, then, in increasing k, the other candidates whose upper bound reaches its exact score. The CUDA
// screen_rescore_kernel applies the same rule. Returns the number of rescored dot products.
HERMES_CPU_CLONES
int64_t screened_row(const uint16_t* gr, LazyRow& xr, const core::Tables& t,
                     const std::vector<std::vector<int32_t>>& shadowed, float inv_s, float x16_norm, float dx_norm,
                     int32_t* code_row, ScreenScratch& s) {
  const core::Bound e = core::row_bound(x16_norm, dx_norm, t.d);
  float *corr = s.corr.data(), *hi = s.hi.data(), *lo = s.lo.data(), *gbuf = s.gbuf.data();
  int32_t* cand = s.cand.data();
  int64_t rescored = 0;
  for (int l = 0; l < t.L; ++l) {
    const core::LevelParams& p = t.p[l];
    const int64_t off = t.offset[l];
    const int K = p.K;
    bool have_corr;
    if (p.metric == core::kL2)
      level_brackets<core::kL2>(p, gr + off, t.m16_norm + off, t.dm_norm + off, code_row, e, inv_s, corr, have_corr,
                                lo, hi);
    else
      level_brackets<core::kCos>(p, gr + off, t.m16_norm + off, t.dm_norm + off, code_row, e, inv_s, corr,
                                 have_corr, lo, hi);
    for (int32_t k : shadowed[l]) {  // never the bar, never a candidate (unless the bar is -inf: filtered below)
      lo[k] = NAN;
      hi[k] = -INFINITY;
    }
    const float bar = bar_of(lo, K);
    int n = select_candidates(hi, K, bar, cand);
    if (bar == -INFINITY && !shadowed[l].empty()) {
      int m = 0;
      for (int i = 0; i < n; ++i)
        if (!t.shadow[off + cand[i]]) cand[m++] = cand[i];
      n = m;
    }
    if (n == 1) {
      code_row[l] = cand[0];
      continue;
    }
    core::Best best = core::best_init();
    auto rescore_into = [&](const int32_t* c, int count) {  // exact fp32 scores of codewords c[0..count)
      rescore(xr.get(), t.mt + off * t.d, t.d, c, count, gbuf);
      for (int i = 0; i < count; ++i)
        core::best_update(best, core::score_from_parts(gbuf[i], p.beta[c[i]], inv_s,
                                                       have_corr ? corr[c[i]] : core::correction(p, code_row, c[i]),
                                                       p.cterm[c[i]], p.metric), c[i]);
      rescored += count;
    };
    int32_t k0 = -1;  // the lowest index holding the bar (NaN lo never equals it)
    for (int i = 0; i < n && k0 < 0; ++i)
      if (lo[cand[i]] == bar) k0 = cand[i];
    if (k0 >= 0) {
      rescore_into(&k0, 1);
      const float exact = best.score;
      int m = 0;
      for (int i = 0; i < n; ++i)
        if (cand[i] != k0 && core::reaches(hi[cand[i]], exact)) cand[m++] = cand[i];
      n = m;
    }
    rescore_into(cand, n);
    code_row[l] = best.index;
  }
  return rescored;
}

// 1/||W x + b|| of one row in the row_norms kernel's lane order (NaN for a non-finite row).
float row_inv_norm(const float* xr, const float* wtb, int64_t d, float bb, bool normalize) {
  float xx[core::kWarp] = {0}, wx[core::kWarp] = {0};
  lane_partials(xr, wtb, d, xx, wx);
  return core::inv_norm(core::butterfly_sum32(xx), core::butterfly_sum32(wx), bb, normalize);
}

void require(bool ok, const char* msg) {
  if (!ok) throw std::invalid_argument(std::string("hermes CPU executor: ") + msg);
}

void require_input(const core::Rows& x) {
  require(x.dtype == core::kF32 || x.dtype == core::kF16 || x.dtype == core::kBF16,
          "x must be float32, float16 or bfloat16");
}

const float* f32_rows(const core::Rows& x) {
  require(x.dtype == core::kF32, "x must be float32 (the CPU path converts float16/bfloat16 input first)");
  return static_cast<const float*>(x.data);
}

int max_k(const core::Tables& t) {
  int m = 1;
  for (int l = 0; l < t.L; ++l) m = std::max(m, t.p[l].K);
  return m;
}

}  // namespace

void norms_split(const core::Rows& x, const core::Tables& t, float* inv_s, uint16_t* x16, float* x16_norm,
                 float* dx_norm, const core::Exec& e) {
  require_input(x);
  const int64_t d = x.d;
  std::vector<float> zeros;
  const float* wtb = t.wtb;
  if (wtb == nullptr) {
    zeros.assign(static_cast<size_t>(d), 0.0f);
    wtb = zeros.data();
  }
  parallel_rows(x.n, e.nthreads, [&](int64_t lo, int64_t hi) {
    std::vector<uint16_t> scratch(x16 == nullptr && x16_norm != nullptr ? static_cast<size_t>(d) : 0);
    std::vector<float> row(x.dtype == core::kF32 ? 0 : static_cast<size_t>(d));
    for (int64_t r = lo; r < hi; ++r) {
      const float* xr = f32_row(x, r, row.data());
      if (x16 == nullptr && x16_norm == nullptr && dx_norm == nullptr) {
        inv_s[r] = row_inv_norm(xr, wtb, d, t.bb, t.normalize);
        continue;
      }
      float xx[core::kWarp], wx[core::kWarp], hh[core::kWarp], rr[core::kWarp];
      norms_split_row(xr, wtb, d, x16 != nullptr ? x16 + r * d : scratch.data(), xx, wx, hh, rr);
      inv_s[r] = core::inv_norm(core::butterfly_sum32(xx), core::butterfly_sum32(wx), t.bb, t.normalize);
      if (x16_norm != nullptr) x16_norm[r] = std::sqrt(core::butterfly_sum32(hh));
      if (dx_norm != nullptr) dx_norm[r] = std::sqrt(core::butterfly_sum32(rr));
    }
  });
}

void screen_rescore(const uint16_t* g16, int64_t ldg, const core::Rows& x, const core::Tables& t, const float* inv_s,
                    const float* x16_norm, const float* dx_norm, int32_t* codes, int64_t* rescored,
                    const core::Exec& e) {
  require_input(x);
  require(t.mt != nullptr && t.m16_norm != nullptr && t.dm_norm != nullptr && t.shadow != nullptr,
          "screen_rescore needs the screen tables (mt, m16_norm, dm_norm, shadow)");
  std::vector<std::vector<int32_t>> shadowed(static_cast<size_t>(t.L));
  for (int l = 0; l < t.L; ++l)
    for (int k = 0; k < t.p[l].K; ++k)
      if (t.shadow[t.offset[l] + k]) shadowed[l].push_back(k);
  const int maxK = max_k(t);
  std::atomic<int64_t> total{0};
  parallel_rows(x.n, e.nthreads, [&](int64_t lo, int64_t hi) {
    ScreenScratch s(maxK);
    std::vector<float> row(x.dtype == core::kF32 ? 0 : static_cast<size_t>(x.d));
    int64_t local = 0;
    const int64_t row_bytes = t.cols * static_cast<int64_t>(sizeof(uint16_t));
    for (int64_t r = lo; r < hi; ++r) {
      if (r + kScreenAhead < hi) prefetch_bytes(g16 + (r + kScreenAhead) * ldg, row_bytes);
      LazyRow xr{&x, r, row.data()};
      local += screened_row(g16 + r * ldg, xr, t, shadowed, inv_s[r], x16_norm[r], dx_norm[r], codes + r * t.L, s);
    }
    total += local;
  });
  *rescored += total.load();
}

void argmax_levels(const float* g, int64_t ldg, const core::Rows& x, const core::Tables& t, const float* inv_s,
                   int32_t* codes, const core::Exec& e) {
  const int maxK = max_k(t);
  if (g != nullptr) {
    parallel_rows(x.n, e.nthreads, [&](int64_t lo, int64_t hi) {
      std::vector<float> buf(static_cast<size_t>(maxK));
      for (int64_t r = lo; r < hi; ++r) {
        int32_t* code_row = codes + r * t.L;
        const float s = inv_s != nullptr ? inv_s[r] : 1.0f;
        for (int l = 0; l < t.L; ++l)
          code_row[l] = level_row(t.p[l], g + r * ldg + t.offset[l], s, code_row, buf.data());
      }
    });
    return;
  }
  // The twin of the fp32 SIMT tiles: one fmaf per k, k ascending, per (row, column).
  const float* xp = f32_rows(x);
  parallel_rows(x.n, e.nthreads, [&](int64_t lo, int64_t hi) {
    for (int64_t r = lo; r < hi; ++r) {
      const float* xr = xp + r * x.ld;
      int32_t* code_row = codes + r * t.L;
      const float s = inv_s != nullptr ? inv_s[r] : 1.0f;
      for (int l = 0; l < t.L; ++l) {
        const core::LevelParams& p = t.p[l];
        core::Best best = core::best_init();
        for (int k = 0; k < p.K; ++k) {
          float acc = 0.0f;
          for (int64_t i = 0; i < x.d; ++i) acc = core::mul_add(xr[i], t.m[i * t.cols + t.offset[l] + k], acc);
          core::best_update(best, core::column_score(p, acc, s, code_row, k), k);
        }
        code_row[l] = best.index;
      }
    }
  });
}

void subtract_codeword(float* r, int64_t n, int64_t d, const float* C, const int32_t* codes, int L, int level,
                       const core::Exec& e) {
  parallel_rows(n, e.nthreads, [&](int64_t lo, int64_t hi) {
    for (int64_t i = lo; i < hi; ++i) {
      const float* c = C + static_cast<int64_t>(codes[i * L + level]) * d;
      float* ri = r + i * d;
      for (int64_t j = 0; j < d; ++j) ri[j] -= c[j];
    }
  });
}

void argmax_residual_levels(float* r, int64_t n, const core::Tables& t, const LevelGemm& gemm, int32_t* codes,
                            const core::Exec& e) {
  const int64_t d = t.d;
  for (int l = 0; l < t.L; ++l) {
    const core::LevelParams& p = t.p[l];
    const float* C = t.c + t.offset[l] * d;
    if (gemm) {
      const float* g = gemm(l);
      parallel_rows(n, e.nthreads, [&](int64_t lo, int64_t hi) {
        std::vector<float> buf(static_cast<size_t>(p.K));
        for (int64_t i = lo; i < hi; ++i) codes[i * t.L + l] = level_row(p, g + i * p.K, 1.0f, codes + i * t.L, buf.data());
      });
    } else {  // the kernels' k order against M = C^T
      parallel_rows(n, e.nthreads, [&](int64_t lo, int64_t hi) {
        for (int64_t i = lo; i < hi; ++i) {
          core::Best best = core::best_init();
          for (int k = 0; k < p.K; ++k) {
            float acc = 0.0f;
            for (int64_t j = 0; j < d; ++j) acc = core::mul_add(r[i * d + j], t.m[j * t.cols + t.offset[l] + k], acc);
            core::best_update(best, core::column_score(p, acc, 1.0f, codes + i * t.L, k), k);
          }
          codes[i * t.L + l] = best.index;
        }
      });
    }
    if (l + 1 < t.L) subtract_codeword(r, n, d, C, codes, t.L, l, e);
  }
}

void normalize_rows(float* h, int64_t n, int64_t d, bool normalize, float* inv_s, const core::Exec& e) {
  parallel_rows(n, e.nthreads, [&](int64_t lo, int64_t hi) {
    std::vector<float> zeros(static_cast<size_t>(d), 0.0f);
    for (int64_t r = lo; r < hi; ++r) {
      float* hr = h + r * d;
      float ss[core::kWarp] = {0}, unused[core::kWarp] = {0};
      lane_partials(hr, zeros.data(), d, ss, unused);
      const float inv = core::inv_norm(core::butterfly_sum32(ss), 0.0f, 0.0f, normalize);
      inv_s[r] = inv;
      if (normalize && core::finite(inv))
        for (int64_t i = 0; i < d; ++i) hr[i] *= inv;
    }
  });
}

void rotate(const core::Rows& x, const float* wt, const float* bias, bool normalize, float* h, float* inv_s,
            const core::Exec& e) {
  // The twin of the affine tiles: one fmaf per k, k ascending, then the bias; then normalize_rows.
  const float* xp = f32_rows(x);
  const int64_t d = x.d;
  parallel_rows(x.n, e.nthreads, [&](int64_t lo, int64_t hi) {
    for (int64_t r = lo; r < hi; ++r) {
      const float* xr = xp + r * x.ld;
      for (int64_t c = 0; c < d; ++c) {
        float acc = 0.0f;
        for (int64_t i = 0; i < d; ++i) acc = core::mul_add(xr[i], wt[i * d + c], acc);
        h[r * d + c] = acc + bias[c];
      }
    }
  });
  normalize_rows(h, x.n, d, normalize, inv_s, e);
}

void f16_to_f32(const uint16_t* in, int64_t n, float* out, int nthreads) {
  const _Float16* h = reinterpret_cast<const _Float16*>(in);
  parallel_rows(n, nthreads, [&](int64_t lo, int64_t hi) { half_to_float(h + lo, hi - lo, out + lo); });
}

// ---------------------------------------------------------------------------------- corpus-scale metrics
namespace {
// Row kernels for unit_rows / run_sums, with the FMA/AVX clones of the executor's hot loops. Reductions keep 16
// fixed lanes, so they vectorize without reassociating (no fast-math).
constexpr int kLanes = 16;

// Largest |x[i]| (NaN ignored) and whether every x[i] is finite.
HERMES_CPU_CLONES
float peak_abs_finite(const float* __restrict x, int64_t d, bool* finite) {
  float m[kLanes] = {}, z[kLanes] = {};
  int64_t i0 = 0;
  for (; i0 + kLanes <= d; i0 += kLanes)
    for (int l = 0; l < kLanes; ++l) {
      const float v = x[i0 + l];
      const float a = std::fabs(v);
      m[l] = a > m[l] ? a : m[l];
      z[l] += v * 0.0f;  // NaN iff some value is NaN or +-Inf
    }
  for (int l = 0; i0 + l < d; ++l) {
    const float v = x[i0 + l];
    const float a = std::fabs(v);
    m[l] = a > m[l] ? a : m[l];
    z[l] += v * 0.0f;
  }
  float peak = 0.0f, zs = 0.0f;
  for (int l = 0; l < kLanes; ++l) {
    peak = m[l] > peak ? m[l] : peak;
    zs += z[l];
  }
  *finite = zs == 0.0f;
  return peak;
}

// sum (x[i] * s)^2: float lanes (each term <= 1 when s = 1 / peak), the lanes added in double.
HERMES_CPU_CLONES
double scaled_sum_squares(const float* __restrict x, int64_t d, float s) {
  float q[kLanes] = {};
  int64_t i0 = 0;
  for (; i0 + kLanes <= d; i0 += kLanes)
    for (int l = 0; l < kLanes; ++l) {
      const float v = x[i0 + l] * s;
      q[l] += v * v;
    }
  for (int l = 0; i0 + l < d; ++l) {
    const float v = x[i0 + l] * s;
    q[l] += v * v;
  }
  double acc = 0.0;
  for (int l = 0; l < kLanes; ++l) acc += q[l];
  return acc;
}

HERMES_CPU_CLONES
void scale_row(const float* __restrict x, int64_t d, float s, float* __restrict out) {
  for (int64_t i = 0; i < d; ++i) out[i] = x[i] * s;
}

HERMES_CPU_CLONES
void add_row_f32(const float* __restrict x, int64_t d, double* __restrict acc) {
  for (int64_t i = 0; i < d; ++i) acc[i] += x[i];
}

}  // namespace

int64_t unit_rows(const void* x, bool half, int64_t n, int64_t d, float* u, double* norms, int nthreads) {
  std::atomic<int64_t> bad{n};
  parallel_rows(n, nthreads, [&](int64_t lo, int64_t hi) {
    std::vector<float> tmp(half ? static_cast<size_t>(d) : 0);
    for (int64_t r = lo; r < hi; ++r) {
      const float* xr;
      if (half) {
        half_to_float(static_cast<const _Float16*>(x) + r * d, d, tmp.data());
        xr = tmp.data();
      } else {
        xr = static_cast<const float*>(x) + r * d;
      }
      float* ur = u + r * d;
      bool finite = true;
      const float peak = peak_abs_finite(xr, d, &finite);
      if (!finite) {
        int64_t cur = bad.load();
        while (r < cur && !bad.compare_exchange_weak(cur, r)) {
        }
        std::memset(ur, 0, sizeof(float) * static_cast<size_t>(d));
        norms[r] = 0.0;
        continue;
      }
      if (peak == 0.0f) {  // a zero row stays zero
        std::memset(ur, 0, sizeof(float) * static_cast<size_t>(d));
        norms[r] = 0.0;
        continue;
      }
      // Dividing by the largest |value| first: a finite row whose norm overflows float32 still normalizes.
      const float inv_peak = 1.0f / peak;
      if (!std::isfinite(inv_peak)) {  // every value subnormal: scale in double
        double ss = 0.0;
        for (int64_t i = 0; i < d; ++i) ss += static_cast<double>(xr[i]) * xr[i];
        const double nrm = std::sqrt(ss);
        norms[r] = nrm;
        for (int64_t i = 0; i < d; ++i) ur[i] = static_cast<float>(xr[i] / nrm);
        continue;
      }
      const double nrm = std::sqrt(scaled_sum_squares(xr, d, inv_peak));  // >= 1: the peak's own term is 1
      norms[r] = nrm * peak;
      scale_row(xr, d, static_cast<float>(static_cast<double>(inv_peak) / nrm), ur);
    }
  });
  const int64_t b = bad.load();
  return b < n ? b : -1;
}

void run_sums(const float* rows, int64_t d, const int64_t* starts, const int64_t* ends, int64_t nruns,
              double* out, int nthreads) {
  parallel_rows(nruns, nthreads, [&](int64_t lo, int64_t hi) {
    for (int64_t j = lo; j < hi; ++j) {
      double* acc = out + j * d;
      std::fill(acc, acc + d, 0.0);
      const int64_t a = starts[j], e = ends[j];
      for (int64_t r = a; r < e; ++r) add_row_f32(rows + r * d, d, acc);
    }
  });
}

int64_t pread_rows(int fd, const int64_t* offsets, int64_t n, int64_t row_bytes, char* out, int* err, int nthreads) {
  std::atomic<int64_t> first_short{n};
  std::atomic<int> first_err{0};
  // Each row is one pread (page-cache copies and syscalls): spread over the same team as the other row loops.
  parallel_rows(n, nthreads, [&](int64_t lo, int64_t hi) {
    for (int64_t i = lo; i < hi && i < first_short.load(std::memory_order_relaxed); ++i) {
      int64_t got = 0;
      while (got < row_bytes) {
        const ssize_t r = ::pread(fd, out + i * row_bytes + got, static_cast<size_t>(row_bytes - got),
                                  static_cast<off_t>(offsets[i] + got));
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) {
          int zero = 0;
          first_err.compare_exchange_strong(zero, errno);
        }
        if (r <= 0) break;
        got += r;
      }
      if (got < row_bytes) {
        int64_t cur = first_short.load();
        while (i < cur && !first_short.compare_exchange_weak(cur, i)) {
        }
        break;
      }
    }
  });
  *err = first_err.load();
  const int64_t s = first_short.load();
  return s < n ? s : -1;
}

}  // namespace cpu
}  // namespace hermes
