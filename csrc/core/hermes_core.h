// Per-row arithmetic shared by the CPU executor and the CUDA kernels: norms, score corrections,
// the metric transform and the tie rule. Header-only; no CUDA runtime, no pybind11.
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__) || defined(HERMES_SIMT_EMULATION)
#define HERMES_HD __host__ __device__ __forceinline__
#else
#define HERMES_HD inline
#endif

namespace hermes {
namespace core {

constexpr int kMaxLevels = 8;
constexpr int kWarp = 32;

enum Metric : int { kL2 = 0, kCos = 1 };
enum InputType : int { kF32 = 0, kF16 = 1, kBF16 = 2 };

// Every a*b+c below is an explicit fmaf so that nvcc (which contracts by default) and g++
// (built with -ffp-contract=off) round identically.
HERMES_HD float mul_add(float a, float b, float c) { return fmaf(a, b, c); }

// A product or sum nvcc may not fuse with its neighbours (it contracts a*b+c into an FMA by default; the CPU
// build has -ffp-contract=off): the screen's bound and scores round the same on both sides.
HERMES_HD float mul(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}
HERMES_HD float add(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fadd_rn(a, b);
#else
  return a + b;
#endif
}

// True for finite v (Inf - Inf and NaN - NaN are NaN); the same expression on host and device.
HERMES_HD bool finite(float v) { return v - v == 0.0f; }

// 1/||W x + b|| for orthogonal W, from xx = ||x||^2 and wx = (W^T b).x:
// ||W x + b||^2 = xx + 2 wx + ||b||^2. A zero vector maps to h = 0 (inverse norm 0).
// Returns NaN for a row with a non-finite entry, so callers can name the row.
HERMES_HD float inv_norm(float xx, float wx, float bb, bool normalize) {
  if (!finite(xx) || !finite(wx)) return NAN;
  if (!normalize) return 1.0f;
  float s2 = add(mul_add(2.0f, wx, xx), bb);
  s2 = s2 > 0.0f ? s2 : 0.0f;
  float s = sqrtf(s2);
  return s > 0.0f ? 1.0f / s : 0.0f;
}

// Lane partials of a row reduction in warp order: element i belongs to lane i % 32 and each lane
// accumulates its elements in increasing i. The CPU replays this order exactly.
HERMES_HD void norm_step(float xi, float wi, float& xx, float& wx) {
  xx = mul_add(xi, xi, xx);
  wx = mul_add(xi, wi, wx);
}

// The butterfly (xor-shuffle) combination of 32 lane partials, as __shfl_xor_sync computes it. Every lane
// ends with the same value because fp addition is commutative (lane j adds v_j + v_{j^o}, its mirror adds the
// same two), so only lane 0's chain is replayed: at offset o it needs lanes i < o, v_i + v_{i+o}. 31 adds.
HERMES_HD float butterfly_sum32(float* v) {
  for (int o = kWarp / 2; o > 0; o >>= 1)
    for (int i = 0; i < o; ++i) v[i] = add(v[i], v[i + o]);
  return v[0];
}

// What one level's search needs besides the GEMM operand. On the folded path (orthogonal W) the
// GEMM is against M_l = W^T C_l^T, beta = C_l b and T[j] = C_j C_l^T (j < level) remove the
// earlier stages' codewords without materializing residuals. On the explicit path beta and T are null.
struct LevelParams {
  int K;                       // codewords at this level
  int level;                   // 0-based stage index l
  int L;                       // number of levels: the row stride of the codes array
  int metric;                  // Metric
  const float* beta;           // [K] or nullptr
  const float* cterm;          // [K]: ||c_k||^2 for l2, 1/||c_k|| (0 for a zero codeword) for cos
  const float* T[kMaxLevels];  // T[j]: [K_j, K] row-major for j < level, or nullptr
};

// sum_{j<l} T_jl[c_j, k]: what the earlier stages' codewords contribute to r_l . c_k on the folded
// path (0 on the explicit path). Added in increasing j, starting from 0.
HERMES_HD float correction(const LevelParams& p, const int32_t* code_row, int k) {
  float corr = 0.0f;
  for (int j = 0; j < p.level; ++j) {
    if (p.T[j] != nullptr) corr = add(corr, p.T[j][static_cast<int64_t>(code_row[j]) * p.K + k]);
  }
  return corr;
}

// The quantity each stage maximizes, from its parts. First the residual dot product
//   r_l . c_k = (x . M_l[:, k] + beta_k) / s - corr   (folded)   or   g   (explicit: beta = corr = 0, inv_s = 1),
// then the metric: l2 maximizes 2 r.c - ||c||^2 (= argmin ||r - c||^2); cos maximizes r.c / ||c||
// (cterm = 1/||c||, 0 for a zero codeword, which therefore scores 0).
HERMES_HD float score_from_parts(float g, float beta, float inv_s, float corr, float cterm, int metric) {
  const float rc = mul_add(add(g, beta), inv_s, -corr);
  return metric == kL2 ? mul_add(2.0f, rc, -cterm) : mul(rc, cterm);
}

HERMES_HD float column_score(const LevelParams& p, float g, float inv_s, const int32_t* code_row, int k) {
  return score_from_parts(g, p.beta != nullptr ? p.beta[k] : 0.0f, inv_s, correction(p, code_row, k), p.cterm[k],
                          p.metric);
}

// Running (best score, index). Ties go to the lowest index, so the result does not depend on the
// order in which columns or partial results are merged.
struct Best {
  float score;
  int32_t index;
};

HERMES_HD Best best_init() { return Best{-INFINITY, -1}; }

HERMES_HD bool better(float s, int32_t k, float bs, int32_t bk) {
  return bk < 0 || s > bs || (s == bs && k < bk);
}

HERMES_HD void best_update(Best& b, float s, int32_t k) {
  if (k >= 0 && better(s, k, b.score, b.index)) {
    b.score = s;
    b.index = k;
  }
}

}  // namespace core
}  // namespace hermes
