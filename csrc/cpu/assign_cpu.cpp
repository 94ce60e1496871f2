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
      const float* xr = x + r * ldx;
      float xx[core::kWarp] = {0}, wx[core::kWarp] = {0};
      for (int64_t i = 0; i < d; ++i) core::norm_step(xr[i], wtb[i], xx[i % core::kWarp], wx[i % core::kWarp]);
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
    for (int64_t r = lo; r < hi; ++r) {
      float* hr = h + r * ldh;
      float ss[core::kWarp] = {0}, unused[core::kWarp] = {0};
      for (int64_t i = 0; i < d; ++i) core::norm_step(hr[i], 0.0f, ss[i % core::kWarp], unused[i % core::kWarp]);
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
    for (int64_t r = lo; r < hi; ++r) {
      const float* gr = g + r * ldg;
      int32_t* code_row = codes + r * p.L;
      float s = inv_s != nullptr ? inv_s[r] : 1.0f;
      core::Best best = core::best_init();
      for (int k = 0; k < p.K; ++k) core::best_update(best, core::column_score(p, gr[k], s, code_row, k), k);
      code_row[p.level] = best.index;
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
