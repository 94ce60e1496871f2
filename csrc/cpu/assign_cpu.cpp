// CPU executors for hermes: row norms, per-level argmin epilogue and codeword subtraction, calling csrc/core.
#include "cpu/assign_cpu.h"

#include <algorithm>
#include <atomic>
#include <cstring>
#include <thread>
#include <vector>

namespace hermes {
namespace cpu {
namespace {

// Splits [0, n) into contiguous chunks, one per thread; runs inline for small n or one thread.
template <class F>
void parallel_rows(int64_t n, int nthreads, F&& fn) {
  if (n <= 0) return;
  int64_t t = std::max<int64_t>(1, std::min<int64_t>(nthreads, (n + 63) / 64));
  if (t == 1) {
    fn(int64_t{0}, n);
    return;
  }
  std::vector<std::thread> pool;
  pool.reserve(static_cast<size_t>(t - 1));
  int64_t chunk = (n + t - 1) / t;
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

// Round to nearest even, as torch does; |bf16(v) - v| <= 2^-8 |v| for the finite values passed here.
HERMES_CPU_CLONES
void to_bf16(const float* v, int64_t n, uint16_t* out) {
  for (int64_t i = 0; i < n; ++i) {
    uint32_t u;
    std::memcpy(&u, v + i, sizeof u);
    out[i] = static_cast<uint16_t>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
  }
}

// ||x16|| and ||x - x16|| of one row (x - x16 is exact in fp32), for the screen's error bound.
HERMES_CPU_CLONES
void bf16_norms(const float* x, const uint16_t* x16, int64_t d, float* x16_norm, float* dx_norm) {
  float a[16] = {0}, b[16] = {0};
  for (int64_t i = 0; i < d; ++i) {
    const uint32_t u = static_cast<uint32_t>(x16[i]) << 16;
    float t;
    std::memcpy(&t, &u, sizeof t);
    const float e = x[i] - t;
    a[i % 16] = core::mul_add(t, t, a[i % 16]);
    b[i % 16] = core::mul_add(e, e, b[i % 16]);
  }
  float sa = 0.0f, sb = 0.0f;
  for (int j = 0; j < 16; ++j) {
    sa += a[j];
    sb += b[j];
  }
  *x16_norm = std::sqrt(sa);
  *dx_norm = std::sqrt(sb);
}

// bf16 bits -> float: the bits are the high half of the float's.
HERMES_CPU_CLONES
void bf16_row_to_float(const uint16_t* h, int n, float* out) {
  for (int k = 0; k < n; ++k) {
    const uint32_t u = static_cast<uint32_t>(h[k]) << 16;
    std::memcpy(out + k, &u, sizeof u);
  }
}

// One row, all levels, screened. corr, hi and lo are scratch of size max K; beta is never null here.
HERMES_CPU_CLONES
int64_t screened_row(const uint16_t* gr, const float* xr, int64_t d, const float* mt, const float* m16_norm,
                     const float* dm_norm, const ScreenLevel* levels, int L, float inv_s, float x16_norm,
                     float dx_norm, int32_t* code_row, float* corr, float* hi, float* lo) {
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
    // scores at g16 -/+ E bracket the exact one. The metric is a literal in each loop so both vectorize.
    const uint16_t* gl = gr + off;
    const float* mn = m16_norm + off;
    const float* dn = dm_norm + off;
    bf16_row_to_float(gl, K, hi);  // hi holds the bf16 scores as floats until it is overwritten below
    if (p.metric == core::kL2) {
      for (int k = 0; k < K; ++k) {
        const float g = hi[k], e = c_out * std::fabs(g) + a * dn[k] + b * mn[k];
        lo[k] = core::score_from_parts(g - e, p.beta[k], inv_s, corr[k], p.cterm[k], core::kL2);
        hi[k] = core::score_from_parts(g + e, p.beta[k], inv_s, corr[k], p.cterm[k], core::kL2);
      }
    } else {
      for (int k = 0; k < K; ++k) {
        const float g = hi[k], e = c_out * std::fabs(g) + a * dn[k] + b * mn[k];
        lo[k] = core::score_from_parts(g - e, p.beta[k], inv_s, corr[k], p.cterm[k], core::kCos);
        hi[k] = core::score_from_parts(g + e, p.beta[k], inv_s, corr[k], p.cterm[k], core::kCos);
      }
    }
    const float best_lo = max_of(lo, K);
    core::Best best = core::best_init();
    for (int k = 0; k < K; ++k) {
      if (!(hi[k] >= best_lo)) continue;
      const float g = dot_fast(xr, mt + (off + k) * d, d);
      core::best_update(best, core::score_from_parts(g, p.beta ? p.beta[k] : 0.0f, inv_s, corr[k], p.cterm[k], p.metric), k);
      ++rescored;
    }
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
  // One pass: each row is converted while it is still in cache from its norm.
  std::atomic<int64_t> first_bad{-1};
  parallel_rows(n, nthreads, [&](int64_t lo, int64_t hi) {
    for (int64_t r = lo; r < hi; ++r) {
      inv_s[r] = row_inv_norm(x + r * d, wtb, d, bb, normalize);
      if (std::isnan(inv_s[r])) {
        record_bad(first_bad, r);
        continue;
      }
      to_bf16(x + r * d, d, x16 + r * d);
      bf16_norms(x + r * d, x16 + r * d, d, x16_norm + r, dx_norm + r);
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
    int64_t local = 0;
    for (int64_t r = lo; r < hi; ++r)
      local += screened_row(g16 + r * ldg, x + r * d, d, mt, m16_norm, dm_norm, levels, L, inv_s[r], x16_norm[r],
                            dx_norm[r], codes + r * L, corr.data(), hib.data(), lob.data());
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
