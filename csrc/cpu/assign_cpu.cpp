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

// One row of one level: the corrections in core order (0, then + T_0, + T_1, ...), the scores, the argmax.
HERMES_CPU_CLONES
int32_t level_row(const core::LevelParams& p, const float* gr, float inv_s, const int32_t* code_row, float* buf) {
  const int K = p.K;
  for (int k = 0; k < K; ++k) buf[k] = 0.0f;
  for (int j = 0; j < p.level; ++j) {
    if (p.T[j] == nullptr) continue;
    const float* t = p.T[j] + static_cast<int64_t>(code_row[j]) * K;
    for (int k = 0; k < K; ++k) buf[k] += t[k];
  }
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

void record_bad(std::atomic<int64_t>& first_bad, int64_t row) {
  int64_t cur = first_bad.load();
  while ((cur < 0 || row < cur) && !first_bad.compare_exchange_weak(cur, row)) {
  }
}

}  // namespace

int64_t row_norms(const float* x, int64_t n, int64_t d, int64_t ldx, const float* wtb, float bb,
                  bool normalize, float* inv_s, int nthreads) {
  std::atomic<int64_t> first_bad{-1};
  parallel_rows(n, nthreads, [&](int64_t lo, int64_t hi) {
    for (int64_t r = lo; r < hi; ++r) {
      float xx[core::kWarp] = {0}, wx[core::kWarp] = {0};
      lane_partials(x + r * ldx, wtb, d, xx, wx);
      float sx = core::butterfly_sum32(xx), sw = core::butterfly_sum32(wx);
      inv_s[r] = core::inv_norm(sx, sw, bb, normalize);
      if (std::isnan(inv_s[r])) record_bad(first_bad, r);
    }
  });
  return first_bad.load();
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
