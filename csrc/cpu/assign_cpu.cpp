// CPU executors for hermes: row norms, per-level argmin epilogue and codeword subtraction, calling csrc/core.
#include "cpu/assign_cpu.h"

#include <dlfcn.h>

#include <algorithm>
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

// fp32 dot product for the exact rescoring: 64 lane partial sums (four independent vector chains), then a
// halving tree; both vectorize. Any fp32 summation order is within the screen's error bound.
HERMES_CPU_CLONES
float dot_fast(const float* a, const float* b, int64_t d) {
  constexpr int kLanes = 64;
  float acc[kLanes] = {0};
  int64_t i0 = 0;
  for (; i0 + kLanes <= d; i0 += kLanes)
    for (int lane = 0; lane < kLanes; ++lane) acc[lane] = core::mul_add(a[i0 + lane], b[i0 + lane], acc[lane]);
  for (int lane = 0; i0 + lane < d; ++lane) acc[lane] = core::mul_add(a[i0 + lane], b[i0 + lane], acc[lane]);
  for (int o = kLanes / 2; o > 0; o >>= 1)
    for (int i = 0; i < o; ++i) acc[i] += acc[i + o];
  return acc[0];
}

// max of v[0..n), n >= 1, NaN-free: 16 lanes so it vectorizes (max is exact in any order).
HERMES_CPU_CLONES
float max_of(const float* v, int n) {
  float m[16];
  for (int j = 0; j < 16; ++j) m[j] = v[0];
  int k0 = 0;
  for (; k0 + 16 <= n; k0 += 16)
    for (int j = 0; j < 16; ++j) m[j] = v[k0 + j] > m[j] ? v[k0 + j] : m[j];
  for (int j = 0; k0 + j < n; ++j) m[j] = v[k0 + j] > m[j] ? v[k0 + j] : m[j];
  float r = m[0];
  for (int j = 1; j < 16; ++j) r = m[j] > r ? m[j] : r;
  return r;
}

// The screened path's first pass over one row, in one sweep: the lane partials of ||x||^2 and x.wtb in the
// row_norms kernel's order (as lane_partials), the bf16 rounding of x (round to nearest even, as torch
// does), and the norms ||x16|| and ||x - x16|| (exact in fp32) for the screen's error bound. Local lane
// arrays and restrict pointers so the whole sweep vectorizes.
HERMES_CPU_CLONES
void norms_bf16_row(const float* __restrict xr, const float* __restrict wr, int64_t d, uint16_t* __restrict out,
                    float* __restrict xx_out, float* __restrict wx_out, float* __restrict x16_norm,
                    float* __restrict dx_norm) {
  float xx[core::kWarp] = {0}, wx[core::kWarp] = {0}, a[core::kWarp] = {0}, b[core::kWarp] = {0};
  auto step = [&](int64_t i, int lane) {
    const float v = xr[i];
    core::norm_step(v, wr[i], xx[lane], wx[lane]);
    uint32_t u;
    std::memcpy(&u, &v, sizeof u);
    const uint32_t r = (u + 0x7fffu + ((u >> 16) & 1u)) & 0xffff0000u;
    out[i] = static_cast<uint16_t>(r >> 16);
    float t;
    std::memcpy(&t, &r, sizeof t);
    const float e = v - t;
    a[lane] = core::mul_add(t, t, a[lane]);
    b[lane] = core::mul_add(e, e, b[lane]);
  };
  int64_t i0 = 0;
  for (; i0 + core::kWarp <= d; i0 += core::kWarp)
    for (int lane = 0; lane < core::kWarp; ++lane) step(i0 + lane, lane);
  for (int lane = 0; i0 + lane < d; ++lane) step(i0 + lane, lane);
  float sa = 0.0f, sb = 0.0f;
  for (int j = 0; j < core::kWarp; ++j) {
    sa += a[j];
    sb += b[j];
    xx_out[j] = xx[j];
    wx_out[j] = wx[j];
  }
  *x16_norm = std::sqrt(sa);
  *dx_norm = std::sqrt(sb);
}

// The bracketing scores of one level: lo[k] <= exact score of codeword k <= hi[k], from the bf16 scores g16,
// the error-bound coefficients and the level's tables. Separate restrict-qualified arrays so the loop
// vectorizes (with eight pointers in one loop the compiler gives up on its runtime alias checks).
template <int kMetric>
HERMES_CPU_CLONES void bracket_scores(const uint16_t* __restrict g16, int K, const float* __restrict mn,
                                      const float* __restrict dn, const float* __restrict beta,
                                      const float* __restrict corr, const float* __restrict cterm, float c_out,
                                      float a, float b, float inv_s, float* __restrict lo, float* __restrict hi) {
  for (int k = 0; k < K; ++k) {
    const uint32_t u = static_cast<uint32_t>(g16[k]) << 16;  // bf16 bits are the float's high half
    float g;
    std::memcpy(&g, &u, sizeof g);
    const float e = c_out * std::fabs(g) + a * dn[k] + b * mn[k];
    lo[k] = core::score_from_parts(g - e, beta[k], inv_s, corr[k], cterm[k], kMetric);
    hi[k] = core::score_from_parts(g + e, beta[k], inv_s, corr[k], cterm[k], kMetric);
  }
}

// The screen's candidate search and exact rescoring, with AVX-512 versions (mask compress into a register;
// four candidates' dot products per sweep over x, so four memory streams are in flight) picked at run time.
// cand gets every k with !(hi[k] < best_lo), in increasing k; returns how many. NaN counts as a candidate:
// a NaN bound (an overflowing bf16 score, or a NaN best_lo) brackets nothing, so that codeword is rescored. cand has room for K + 16
// (the vector path stores whole compressed vectors: compress-to-memory is microcoded and slow on AMD Zen 4).
int select_candidates_generic(const float* __restrict hi, int K, float best_lo, int32_t* __restrict cand) {
  int n = 0;
  for (int k = 0; k < K; ++k) {
    cand[n] = k;
    n += hi[k] < best_lo ? 0 : 1;
  }
  return n;
}

// g[i] = x . rows[cand[i]] in fp32 (any fp32 summation order is within the screen's error bound).
void rescore_generic(const float* x, const float* rows, int64_t d, const int32_t* cand, int n, float* g) {
  for (int i = 0; i < n; ++i) g[i] = dot_fast(x, rows + cand[i] * d, d);
}

#ifdef HERMES_AVX512_PATHS
// Horizontal sum through memory (GCC 12's _mm512_reduce_add_ps trips -Wmaybe-uninitialized in its header).
__attribute__((target("avx512f"))) float hsum16(__m512 v) {
  alignas(64) float t[16];
  _mm512_store_ps(t, v);
  for (int o = 8; o > 0; o >>= 1)
    for (int i = 0; i < o; ++i) t[i] += t[i + o];
  return t[0];
}

__attribute__((target("avx512f"))) int select_candidates_avx512(const float* __restrict hi, int K, float best_lo,
                                                                 int32_t* __restrict cand) {
  const __m512 lo = _mm512_set1_ps(best_lo);
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

__attribute__((target("avx512f"))) void rescore_avx512(const float* x, const float* rows, int64_t d,
                                                        const int32_t* cand, int n, float* g) {
  const int64_t dv = d & ~int64_t{15};
  const __mmask16 tail = static_cast<__mmask16>((1u << (d - dv)) - 1u);
  int i = 0;
  for (; i + 4 <= n; i += 4) {
    const float* r0 = rows + cand[i] * d;
    const float* r1 = rows + cand[i + 1] * d;
    const float* r2 = rows + cand[i + 2] * d;
    const float* r3 = rows + cand[i + 3] * d;
    __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps(), a2 = _mm512_setzero_ps(), a3 = _mm512_setzero_ps();
    for (int64_t j = 0; j < dv; j += 16) {
      const __m512 xv = _mm512_loadu_ps(x + j);
      a0 = _mm512_fmadd_ps(xv, _mm512_loadu_ps(r0 + j), a0);
      a1 = _mm512_fmadd_ps(xv, _mm512_loadu_ps(r1 + j), a1);
      a2 = _mm512_fmadd_ps(xv, _mm512_loadu_ps(r2 + j), a2);
      a3 = _mm512_fmadd_ps(xv, _mm512_loadu_ps(r3 + j), a3);
    }
    if (dv < d) {
      const __m512 xv = _mm512_maskz_loadu_ps(tail, x + dv);
      a0 = _mm512_fmadd_ps(xv, _mm512_maskz_loadu_ps(tail, r0 + dv), a0);
      a1 = _mm512_fmadd_ps(xv, _mm512_maskz_loadu_ps(tail, r1 + dv), a1);
      a2 = _mm512_fmadd_ps(xv, _mm512_maskz_loadu_ps(tail, r2 + dv), a2);
      a3 = _mm512_fmadd_ps(xv, _mm512_maskz_loadu_ps(tail, r3 + dv), a3);
    }
    g[i] = hsum16(a0);
    g[i + 1] = hsum16(a1);
    g[i + 2] = hsum16(a2);
    g[i + 3] = hsum16(a3);
  }
  for (; i < n; ++i) {
    const float* r0 = rows + cand[i] * d;
    __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
    int64_t j = 0;
    for (; j + 32 <= dv; j += 32) {
      a0 = _mm512_fmadd_ps(_mm512_loadu_ps(x + j), _mm512_loadu_ps(r0 + j), a0);
      a1 = _mm512_fmadd_ps(_mm512_loadu_ps(x + j + 16), _mm512_loadu_ps(r0 + j + 16), a1);
    }
    for (; j < dv; j += 16) a0 = _mm512_fmadd_ps(_mm512_loadu_ps(x + j), _mm512_loadu_ps(r0 + j), a0);
    if (dv < d) a1 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(tail, x + dv), _mm512_maskz_loadu_ps(tail, r0 + dv), a1);
    g[i] = hsum16(_mm512_add_ps(a0, a1));
  }
}

#endif

}  // namespace

std::string thread_pool() {
  if (const OmpTeam* t = omp_team()) return std::string("OpenMP team of the already loaded ") + t->lib;
  return "std::thread";
}

// The screen's vector paths need AVX-512F at run time; HERMES_CPU_ISA=generic turns them off (for tests and
// for comparing the paths).
bool use_avx512() {
#ifdef HERMES_AVX512_PATHS
  static const bool ok = [] {
    const char* isa = std::getenv("HERMES_CPU_ISA");
    return __builtin_cpu_supports("avx512f") && !(isa != nullptr && std::strcmp(isa, "generic") == 0);
  }();
  return ok;
#else
  return false;
#endif
}

namespace {

int select_candidates(const float* hi, int K, float best_lo, int32_t* cand) {
#ifdef HERMES_AVX512_PATHS
  if (use_avx512()) return select_candidates_avx512(hi, K, best_lo, cand);
#endif
  return select_candidates_generic(hi, K, best_lo, cand);
}

void rescore(const float* x, const float* rows, int64_t d, const int32_t* cand, int n, float* g) {
#ifdef HERMES_AVX512_PATHS
  if (use_avx512()) return rescore_avx512(x, rows, d, cand, n, g);
#endif
  rescore_generic(x, rows, d, cand, n, g);
}

// One row, all levels, screened. corr, hi and lo are scratch of size max K; beta is never null here.
HERMES_CPU_CLONES
int64_t screened_row(const uint16_t* gr, const float* xr, int64_t d, const float* mt, const float* m16_norm,
                     const float* dm_norm, const ScreenLevel* levels, int L, float inv_s, float x16_norm,
                     float dx_norm, int32_t* code_row, float* corr, float* hi, float* lo, int32_t* cand,
                     float* gbuf) {
  // With x = x16 + dx and M = M16 + dM (bf16 parts and exact fp32 remainders), the bf16 products are exact in
  // fp32, so |g16 - x.M_k| <= 2^-8 |g16| (bf16 output) + ||x16|| ||dM_k|| + ||dx|| ||M16_k|| + ||dx|| ||dM_k||
  // + d 2^-24 ||x16|| ||M16_k|| (fp32 accumulation). Inflated by 1% so the bound's own rounding stays covered.
  const float c_out = 1.01f * 0x1p-8f;
  const float a = 1.01f * (x16_norm + dx_norm);
  const float b = 1.01f * (dx_norm + static_cast<float>(d) * 0x1p-24f * x16_norm);
  int64_t rescored = 0;
  for (int l = 0; l < L; ++l) {
    const core::LevelParams& p = levels[l].p;
    const int64_t off = levels[l].offset;
    const int K = p.K;
    corrections(p, code_row, corr);
    // The score is non-decreasing in the dot product (inv_s >= 0, cterm >= 0, rounding is monotone), so
    // scores at g16 -/+ E bracket the exact one.
    if (p.metric == core::kL2)
      bracket_scores<core::kL2>(gr + off, K, m16_norm + off, dm_norm + off, p.beta, corr, p.cterm, c_out, a, b,
                                inv_s, lo, hi);
    else
      bracket_scores<core::kCos>(gr + off, K, m16_norm + off, dm_norm + off, p.beta, corr, p.cterm, c_out, a, b,
                                 inv_s, lo, hi);
    for (int i = 0; i < levels[l].n_shadowed; ++i) lo[levels[l].shadowed[i]] = hi[levels[l].shadowed[i]] = -INFINITY;
    // Candidates: every k whose upper bound reaches the best lower bound (or is NaN). The one holding that
    // lower bound is always among them (with a NaN best_lo, every k is); when it is alone, every other exact
    // score is strictly below its own and it wins without being rescored.
    const float best_lo = max_of(lo, K);
    int n = select_candidates(hi, K, best_lo, cand);
    if (n == 1) {
      code_row[p.level] = cand[0];
      continue;
    }
    core::Best best = core::best_init();
    auto rescore_into = [&](const int32_t* c, int count) {  // exact fp32 scores of codewords c[0..count)
      rescore(xr, mt + off * d, d, c, count, gbuf);
      for (int i = 0; i < count; ++i)
        core::best_update(best, core::score_from_parts(gbuf[i], p.beta[c[i]], inv_s, corr[c[i]], p.cterm[c[i]],
                                                       p.metric), c[i]);
      rescored += count;
    };
    // The candidate holding the best lower bound usually wins: rescore it first. Its exact score S is then the
    // bar, higher than best_lo: a candidate with hi < S cannot reach S, so only those with hi >= S (ties
    // included, for the lowest-index rule; NaN included) are rescored.
    int first = 0;
    while (first + 1 < n && lo[cand[first]] != best_lo) ++first;
    const int32_t k0 = cand[first];
    rescore_into(&k0, 1);
    int m = 0;
    for (int i = 0; i < n; ++i)
      if (cand[i] != k0 && !(hi[cand[i]] < best.score)) cand[m++] = cand[i];
    rescore_into(cand, m);
    code_row[p.level] = best.index;
  }
  return rescored;
}

void record_bad(std::atomic<int64_t>& first_bad, int64_t row) {
  int64_t cur = first_bad.load();
  while ((cur < 0 || row < cur) && !first_bad.compare_exchange_weak(cur, row)) {
  }
}

// 1/||W x + b|| of one row in the row_norms kernel's lane order (NaN for a non-finite row).
float row_inv_norm(const float* xr, const float* wtb, int64_t d, float bb, bool normalize) {
  float xx[core::kWarp] = {0}, wx[core::kWarp] = {0};
  lane_partials(xr, wtb, d, xx, wx);
  return core::inv_norm(core::butterfly_sum32(xx), core::butterfly_sum32(wx), bb, normalize);
}

}  // namespace

int64_t row_norms(const float* x, int64_t n, int64_t d, int64_t ldx, const float* wtb, float bb,
                  bool normalize, float* inv_s, int nthreads) {
  std::atomic<int64_t> first_bad{-1};
  parallel_rows(n, nthreads, [&](int64_t lo, int64_t hi) {
    for (int64_t r = lo; r < hi; ++r) {
      inv_s[r] = row_inv_norm(x + r * ldx, wtb, d, bb, normalize);
      if (std::isnan(inv_s[r])) record_bad(first_bad, r);
    }
  });
  return first_bad.load();
}

int64_t row_norms_bf16(const float* x, int64_t n, int64_t d, const float* wtb, float bb, bool normalize,
                       float* inv_s, uint16_t* x16, float* x16_norm, float* dx_norm, int nthreads) {
  // One sweep per row: norms, bf16 conversion and the bound's norms (x16 of a bad row is never used).
  std::atomic<int64_t> first_bad{-1};
  parallel_rows(n, nthreads, [&](int64_t lo, int64_t hi) {
    for (int64_t r = lo; r < hi; ++r) {
      float xx[core::kWarp], wx[core::kWarp];
      norms_bf16_row(x + r * d, wtb, d, x16 + r * d, xx, wx, x16_norm + r, dx_norm + r);
      inv_s[r] = core::inv_norm(core::butterfly_sum32(xx), core::butterfly_sum32(wx), bb, normalize);
      if (std::isnan(inv_s[r])) record_bad(first_bad, r);
    }
  });
  return first_bad.load();
}

namespace {
// IEEE half -> float, vectorized by the x86-64-v3/v4 clones (F16C / AVX-512 conversions).
HERMES_CPU_CLONES
void half_to_float(const _Float16* in, int64_t n, float* out) {
  for (int64_t i = 0; i < n; ++i) out[i] = static_cast<float>(in[i]);
}
}  // namespace

void f16_to_f32(const uint16_t* in, int64_t n, float* out, int nthreads) {
  const _Float16* h = reinterpret_cast<const _Float16*>(in);
  parallel_rows(n, nthreads, [&](int64_t lo, int64_t hi) { half_to_float(h + lo, hi - lo, out + lo); });
}

int64_t normalize_rows(float* h, int64_t n, int64_t d, int64_t ldh, bool normalize, int nthreads) {
  std::atomic<int64_t> first_bad{-1};
  parallel_rows(n, nthreads, [&](int64_t lo, int64_t hi) {
    std::vector<float> zeros(static_cast<size_t>(d), 0.0f);
    for (int64_t r = lo; r < hi; ++r) {
      float* hr = h + r * ldh;
      float ss[core::kWarp] = {0}, unused[core::kWarp] = {0};
      lane_partials(hr, zeros.data(), d, ss, unused);
      float inv = core::inv_norm(core::butterfly_sum32(ss), 0.0f, 0.0f, normalize);
      if (std::isnan(inv)) {
        record_bad(first_bad, r);
        continue;
      }
      if (normalize)
        for (int64_t i = 0; i < d; ++i) hr[i] *= inv;
    }
  });
  return first_bad.load();
}

void argmin_level(const float* g, int64_t ldg, const core::LevelParams& p, const float* inv_s, int64_t n,
                  int32_t* codes, int nthreads) {
  parallel_rows(n, nthreads, [&](int64_t lo, int64_t hi) {
    std::vector<float> buf(static_cast<size_t>(p.K));
    for (int64_t r = lo; r < hi; ++r) {
      int32_t* code_row = codes + r * p.L;
      code_row[p.level] = level_row(p, g + r * ldg, inv_s != nullptr ? inv_s[r] : 1.0f, code_row, buf.data());
    }
  });
}

int64_t assign_screened(const uint16_t* g16, int64_t ldg, const float* x, int64_t n, int64_t d, const float* mt,
                        const float* m16_norm, const float* dm_norm, const ScreenLevel* levels, int L,
                        const float* inv_s, const float* x16_norm, const float* dx_norm, int32_t* codes,
                        int nthreads) {
  int maxK = 1;
  for (int l = 0; l < L; ++l) maxK = std::max(maxK, levels[l].p.K);
  std::atomic<int64_t> total{0};
  parallel_rows(n, nthreads, [&](int64_t lo, int64_t hi) {
    std::vector<float> corr(static_cast<size_t>(maxK)), hib(static_cast<size_t>(maxK)), lob(static_cast<size_t>(maxK));
    std::vector<int32_t> cand(static_cast<size_t>(maxK) + 16);
    std::vector<float> gbuf(static_cast<size_t>(maxK));
    int64_t local = 0;
    for (int64_t r = lo; r < hi; ++r)
      local += screened_row(g16 + r * ldg, x + r * d, d, mt, m16_norm, dm_norm, levels, L, inv_s[r], x16_norm[r],
                            dx_norm[r], codes + r * L, corr.data(), hib.data(), lob.data(), cand.data(),
                            gbuf.data());
    total += local;
  });
  return total.load();
}

void subtract_codeword(float* r, int64_t n, int64_t d, int64_t ldr, const float* C, const int32_t* codes,
                       int L, int level, int nthreads) {
  parallel_rows(n, nthreads, [&](int64_t lo, int64_t hi) {
    for (int64_t i = lo; i < hi; ++i) {
      const float* c = C + static_cast<int64_t>(codes[i * L + level]) * d;
      float* ri = r + i * ldr;
      for (int64_t j = 0; j < d; ++j) ri[j] -= c[j];
    }
  });
}

void gemm_argmin_exact(const float* a, int64_t n, int64_t d, int64_t lda, const float* b, int64_t ldb,
                       const core::LevelParams& p, const float* inv_s, int32_t* codes, int nthreads) {
  parallel_rows(n, nthreads, [&](int64_t lo, int64_t hi) {
    for (int64_t r = lo; r < hi; ++r) {
      const float* ar = a + r * lda;
      int32_t* code_row = codes + r * p.L;
      float s = inv_s != nullptr ? inv_s[r] : 1.0f;
      core::Best best = core::best_init();
      for (int k = 0; k < p.K; ++k) {
        float acc = 0.0f;
        for (int64_t i = 0; i < d; ++i) acc = core::mul_add(ar[i], b[i * ldb + k], acc);
        core::best_update(best, core::column_score(p, acc, s, code_row, k), k);
      }
      code_row[p.level] = best.index;
    }
  });
}

void affine_exact(const float* x, int64_t n, int64_t d, int64_t ldx, const float* wt, const float* b, float* h,
                  int nthreads) {
  parallel_rows(n, nthreads, [&](int64_t lo, int64_t hi) {
    for (int64_t r = lo; r < hi; ++r) {
      const float* xr = x + r * ldx;
      for (int64_t c = 0; c < d; ++c) {
        float acc = 0.0f;
        for (int64_t i = 0; i < d; ++i) acc = core::mul_add(xr[i], wt[i * d + c], acc);
        h[r * d + c] = acc + b[c];
      }
    }
  });
}

}  // namespace cpu
}  // namespace hermes
