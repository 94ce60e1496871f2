// The bf16 screen's arithmetic, shared by the CPU executor and the CUDA kernels: the bf16 split of x, the
// error bound, the bracketing scores, the candidate rule, the rescoring's summation order, and the model
// tables both executors read. Header-only; no CUDA runtime, no pybind11.
#pragma once

#include <cstdint>
#include <cstring>

#include "core/hermes_core.h"

namespace hermes {
namespace core {

// ------------------------------------------------------------------------------------------ tables
// Everything the folded search of one model needs, on one device (pointers into tensors the caller owns).
// The GEMM operand's columns are the levels' codewords side by side: level l owns [offset[l], offset[l+1]).
struct Tables {
  int L = 0;                         // levels
  int64_t d = 0;                     // input dimension
  int64_t cols = 0;                  // sum of K_l
  int64_t offset[kMaxLevels + 1] = {};
  LevelParams p[kMaxLevels] = {};    // per level: K, metric, beta, cterm, T (pointers already offset)
  const float* m = nullptr;          // [d, cols] fp32 GEMM operand: M = W^T C^T (folded) or C^T (explicit)
  const float* mt = nullptr;         // [cols, d] M^T: the rows the screen rescores
  const float* m16_norm = nullptr;   // [cols] ||bf16(M)[:, k]||, rounded up
  const float* dm_norm = nullptr;    // [cols] ||M[:, k] - bf16(M)[:, k]||, rounded up
  const uint8_t* shadow = nullptr;   // [cols] 1 for a codeword equal to a lower-index one of its level
  const float* wtb = nullptr;        // [d] W^T b (folded)
  const float* c = nullptr;          // [cols, d] the codewords (explicit path: residual updates)
  float bb = 0.0f;                   // ||b||^2
  bool normalize = true;
};

// Input rows as an executor reads them: [n, d] of dtype (InputType), row stride ld elements.
struct Rows {
  const void* data = nullptr;
  int dtype = kF32;
  int64_t n = 0, d = 0, ld = 0;
};

// Where an operation runs: CPU threads, or the caller's CUDA stream (torch.cuda.current_stream()).
struct Exec {
  int nthreads = 1;
  std::uintptr_t stream = 0;
};

// ------------------------------------------------------------------------------------ bf16 split
// v = hi + rem with hi = bf16(v) rounded to nearest even (as torch and __float2bfloat16 round finite
// values) and rem = v - hi exact in fp32. Returns hi's bits; NaN and Inf rows are rejected before use.
HERMES_HD uint16_t bf16_split(float v, float& hi, float& rem) {
  uint32_t u;
  std::memcpy(&u, &v, sizeof u);
  const uint32_t r = (u + 0x7fffu + ((u >> 16) & 1u)) & 0xffff0000u;
  std::memcpy(&hi, &r, sizeof hi);
  rem = v - hi;
  return static_cast<uint16_t>(r >> 16);
}

HERMES_HD float bf16_to_float(uint16_t bits) {
  const uint32_t u = static_cast<uint32_t>(bits) << 16;
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

// One element of the norms + split pass, in the row_norms lane order (element i belongs to lane i % 32):
// ||x||^2 and (W^T b).x partials, and ||x16||^2 and ||x - x16||^2 partials for the bound.
HERMES_HD uint16_t norms_split_step(float xi, float wi, float& xx, float& wx, float& hh, float& rr) {
  norm_step(xi, wi, xx, wx);
  float hi, rem;
  const uint16_t bits = bf16_split(xi, hi, rem);
  hh = mul_add(hi, hi, hh);
  rr = mul_add(rem, rem, rr);
  return bits;
}

// ------------------------------------------------------------------------------------------ bound
// With x = x16 + dx and M = M16 + dM (bf16 parts and exact fp32 remainders), the bf16 products are exact in
// fp32, so |g16 - x.M_k| <= 2^-8 |g16| (bf16 output) + ||x16|| ||dM_k|| + ||dx|| ||M16_k|| + ||dx|| ||dM_k||
// + d 2^-24 ||x16|| ||M16_k|| (fp32 accumulation).
// Inflated by 1% so the bound's own rounding stays covered. Per row: E_k = c_out |g| + a dn_k + b mn_k.
struct Bound {
  float c_out, a, b;
};

HERMES_HD Bound row_bound(float x16_norm, float dx_norm, int64_t d) {
  Bound e;
  e.c_out = 1.01f * 0x1p-8f;
  e.a = mul(1.01f, add(x16_norm, dx_norm));
  e.b = mul(1.01f, mul_add(static_cast<float>(d) * 0x1p-24f, x16_norm, dx_norm));
  return e;
}

// lo <= exact score of codeword k <= hi. The score is non-decreasing in the dot product (inv_s >= 0,
// cterm >= 0, rounding is monotone), so the scores at g -/+ E bracket it. A non-finite g (NaN, or a bf16
// score that overflowed) brackets nothing: lo = hi = NaN, which makes k a candidate and never the bar.
HERMES_HD void bracket(float g, float mn, float dn, float beta, float corr, float cterm, const Bound& e,
                       float inv_s, int metric, float& lo, float& hi) {
  if (!finite(g)) {
    lo = hi = NAN;
    return;
  }
  const float err = mul_add(e.b, mn, mul_add(e.a, dn, mul(e.c_out, fabsf(g))));
  lo = score_from_parts(g - err, beta, inv_s, corr, cterm, metric);
  hi = score_from_parts(g + err, beta, inv_s, corr, cterm, metric);
}

// The bar: the best lower bound of a level, the max over non-shadowed codewords of lo, NaN ignored (-inf
// when there is none), and the lowest index holding it (-1 when none). Order-independent: merging two
// partial results with this rule gives the same (bar, index) in any order.
struct Bar {
  float lo;
  int32_t k;
};

HERMES_HD Bar bar_init() { return Bar{-INFINITY, -1}; }

HERMES_HD void bar_update(Bar& b, float lo, int32_t k) {
  if (k < 0 || lo != lo) return;  // NaN never holds the bar
  if (b.k < 0 || lo > b.lo || (lo == b.lo && k < b.k)) {
    b.lo = lo;
    b.k = k;
  }
}

// The candidate rule: codeword k (not shadowed) can still win when its upper bound reaches the bar. NaN
// counts as reaching it. The codeword holding the bar is always a candidate (hi >= lo).
HERMES_HD bool is_candidate(float hi, float bar) { return !(hi < bar); }

// After the bar's own codeword is rescored to the exact score S: another candidate is rescored only when
// its upper bound reaches S (ties included, for the lowest-index rule; NaN included).
HERMES_HD bool reaches(float hi, float exact) { return !(hi < exact); }

// ------------------------------------------------------------------------------- the exact rescoring
// The rescoring's dot product x . m in one defined order: 64 lane partials (element i to partial i % 64,
// one fmaf per element in increasing i), then a halving tree (partial i += partial i + o, o = 32, 16, ..., 1).
// A warp computes it as lane j holding partials j and j + 32, adding them, then the xor butterfly; the CPU
// as 64 (vector) lanes. Both give these bits.
constexpr int kDotLanes = 64;

HERMES_HD float dot_tree64(float* acc) {
  for (int o = kDotLanes / 2; o > 0; o >>= 1)
    for (int i = 0; i < o; ++i) acc[i] = add(acc[i], acc[i + o]);
  return acc[0];
}

}  // namespace core
}  // namespace hermes
