// The hermes CUDA kernels (bodies only; launchers live in assign_cuda.cu so the SIMT emulator can
// compile these with g++). Every per-row number comes from csrc/core (hermes_core.h, screen.h).
#pragma once

#if defined(HERMES_SIMT_EMULATION)
#include "simt/simt.h"
#else
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#endif

#include <cstdint>

#include "core/hermes_core.h"
#include "core/screen.h"

namespace hermes {
namespace kernels {

constexpr int kTileRows = 64;     // BM: rows per CTA
constexpr int kTileCols = 64;     // BN: columns per column tile
constexpr int kTileK = 16;        // BK: depth of one shared-memory stage
constexpr int kThreadsX = 16;     // threads along columns
constexpr int kThreadsY = 16;     // threads along rows
constexpr int kMicro = 4;         // each thread owns 4 rows x 4 columns, strided by 16
constexpr int kGemmThreads = kThreadsX * kThreadsY;
constexpr int kRowsPerNormBlock = 8;     // row kernels: one warp per row, 8 warps per block
constexpr int kPadRows = kTileRows + 1;  // As row pitch: the transposed stores hit 16 distinct banks
constexpr unsigned kFullMask = 0xffffffffu;
// The tables are read in place from the kernel's parameter space (sm_70+): without __grid_constant__, taking
// their address (const references into t.p[l]) would copy ~900 bytes per thread to local memory.

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

// One warp per row: lane partials in core order (core::norms_split_step), then the xor butterfly; the bf16
// split is stored only when x16 is given (a bf16 input is its own split, with dx = 0).
template <typename T>
__global__ void norms_split_kernel(const T* __restrict__ x,        // [N, d], row stride ldx
                                   int64_t n, int64_t d, int64_t ldx,
                                   const float* __restrict__ wtb,  // [d] or nullptr (b = 0)
                                   float bb, bool normalize,
                                   float* __restrict__ inv_s,      // [N]
                                   uint16_t* __restrict__ x16,     // [N, d] bf16 bits or nullptr
                                   float* __restrict__ x16_norm,   // [N] or nullptr
                                   float* __restrict__ dx_norm) {  // [N] or nullptr
  const int lane = threadIdx.x % core::kWarp;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kRowsPerNormBlock + threadIdx.x / core::kWarp;
  if (row >= n) return;  // whole warps leave together: the row is per-warp
  const T* xr = x + row * ldx;
  float xx = 0.0f, wx = 0.0f, hh = 0.0f, rr = 0.0f;
  for (int64_t i = lane; i < d; i += core::kWarp) {
    const uint16_t bits =
        core::norms_split_step(to_float(xr[i]), wtb != nullptr ? wtb[i] : 0.0f, xx, wx, hh, rr);
    if (x16 != nullptr) x16[row * d + i] = bits;
  }
  for (int o = core::kWarp / 2; o > 0; o >>= 1) {
    xx = core::add(xx, __shfl_xor_sync(kFullMask, xx, o));
    wx = core::add(wx, __shfl_xor_sync(kFullMask, wx, o));
    hh = core::add(hh, __shfl_xor_sync(kFullMask, hh, o));
    rr = core::add(rr, __shfl_xor_sync(kFullMask, rr, o));
  }
  if (lane == 0) {
    inv_s[row] = core::inv_norm(xx, wx, bb, normalize);
    if (x16_norm != nullptr) x16_norm[row] = sqrtf(hh);
    if (dx_norm != nullptr) dx_norm[row] = sqrtf(rr);
  }
}

// One warp per row: sum of squares in core order, then scale the row in place.
__global__ void normalize_rows_kernel(float* __restrict__ h,  // [N, d], row stride ldh
                                      int64_t n, int64_t d, int64_t ldh, bool normalize,
                                      float* __restrict__ inv_s) {  // [N]: NaN marks a bad row
  const int lane = threadIdx.x % core::kWarp;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kRowsPerNormBlock + threadIdx.x / core::kWarp;
  if (row >= n) return;
  float* hr = h + row * ldh;
  float ss = 0.0f, unused = 0.0f;
  for (int64_t i = lane; i < d; i += core::kWarp) core::norm_step(hr[i], 0.0f, ss, unused);
  for (int o = core::kWarp / 2; o > 0; o >>= 1) ss = core::add(ss, __shfl_xor_sync(kFullMask, ss, o));
  const float inv = core::inv_norm(ss, 0.0f, 0.0f, normalize);
  if (lane == 0) inv_s[row] = inv;
  if (normalize && core::finite(inv))
    for (int64_t i = lane; i < d; i += core::kWarp) hr[i] *= inv;
}

// The shared mainloop: acc[i][j] = sum_k a[row0 + ty + 16 i, k] * b[k, col0 + tx + 16 j], k ascending,
// one fmaf per k (out-of-range elements load as 0). A 64x16 tile of a and a 16x64 tile of b per stage.
template <typename T>
__device__ __forceinline__ void tile_dot(const T* __restrict__ a, int64_t n, int64_t d, int64_t lda,
                                         const float* __restrict__ b, int64_t ldb, int64_t ncols,
                                         int64_t row0, int64_t col0,
                                         float (&As)[kTileK][kPadRows], float (&Bs)[kTileK][kTileCols],
                                         float (&acc)[kMicro][kMicro]) {
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int t = ty * kThreadsX + tx;
  for (int i = 0; i < kMicro; ++i)
    for (int j = 0; j < kMicro; ++j) acc[i][j] = 0.0f;
  for (int64_t k0 = 0; k0 < d; k0 += kTileK) {
    for (int e = t; e < kTileRows * kTileK; e += kGemmThreads) {
      const int r = e / kTileK, kk = e % kTileK;
      const int64_t gr = row0 + r, gk = k0 + kk;
      As[kk][r] = (gr < n && gk < d) ? to_float(a[gr * lda + gk]) : 0.0f;
    }
    for (int e = t; e < kTileK * kTileCols; e += kGemmThreads) {
      const int kk = e / kTileCols, c = e % kTileCols;
      const int64_t gk = k0 + kk, gc = col0 + c;
      Bs[kk][c] = (gk < d && gc < ncols) ? b[gk * ldb + gc] : 0.0f;
    }
    __syncthreads();
    for (int kk = 0; kk < kTileK; ++kk) {
      float av[kMicro], bv[kMicro];
      for (int i = 0; i < kMicro; ++i) av[i] = As[kk][ty + kThreadsY * i];
      for (int j = 0; j < kMicro; ++j) bv[j] = Bs[kk][tx + kThreadsX * j];
      for (int i = 0; i < kMicro; ++i)
        for (int j = 0; j < kMicro; ++j) acc[i][j] = core::mul_add(av[i], bv[j], acc[i][j]);
    }
    __syncthreads();
  }
}

// The fp32 SIMT search of one level (precision="fp32", the screen's fallback, the explicit path).
// CTA = 64 rows x all K columns of one level, 64-column tiles; a running (best, index) per row,
// merged across the 16 column threads of a row with xor shuffles (a row's threads share a half-warp).
template <typename T>
__global__ void gemm_argmax_kernel(const T* __restrict__ a,      // [N, d], row stride lda
                                   int64_t n, int64_t d, int64_t lda,
                                   const float* __restrict__ b,  // [d, K], row stride ldb
                                   int64_t ldb,
                                   const __grid_constant__ core::LevelParams p,
                                   const float* __restrict__ inv_s,  // [N] or nullptr
                                   int32_t* __restrict__ codes) {    // [N, L]
  __shared__ float As[kTileK][kPadRows];
  __shared__ float Bs[kTileK][kTileCols];
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int64_t row0 = static_cast<int64_t>(blockIdx.x) * kTileRows;
  core::Best best[kMicro];
  for (int i = 0; i < kMicro; ++i) best[i] = core::best_init();
  float acc[kMicro][kMicro];
  for (int64_t col0 = 0; col0 < p.K; col0 += kTileCols) {
    tile_dot(a, n, d, lda, b, ldb, p.K, row0, col0, As, Bs, acc);
    for (int i = 0; i < kMicro; ++i) {
      const int64_t row = row0 + ty + kThreadsY * i;
      if (row >= n) continue;
      const float s = inv_s != nullptr ? inv_s[row] : 1.0f;
      const int32_t* code_row = codes + row * p.L;
      for (int j = 0; j < kMicro; ++j) {
        const int64_t col = col0 + tx + kThreadsX * j;
        if (col < p.K) {
          const int k = static_cast<int>(col);
          core::best_update(best[i], core::column_score(p, acc[i][j], s, code_row, k), k);
        }
      }
    }
  }
  for (int i = 0; i < kMicro; ++i) {
    for (int o = kThreadsX / 2; o > 0; o >>= 1) {
      const float os = __shfl_xor_sync(kFullMask, best[i].score, o);
      const int32_t oi = __shfl_xor_sync(kFullMask, best[i].index, o);
      core::best_update(best[i], os, oi);
    }
    const int64_t row = row0 + ty + kThreadsY * i;
    if (tx == 0 && row < n) codes[row * p.L + p.level] = best[i].index;
  }
}

// Batched rotation h = x W^T + b: CTA = 64 rows x 64 output columns, same mainloop as gemm_argmax.
template <typename T>
__global__ void affine_kernel(const T* __restrict__ x,        // [N, d], row stride ldx
                              int64_t n, int64_t d, int64_t ldx,
                              const float* __restrict__ wt,   // [d, d] = W^T
                              const float* __restrict__ bias, // [d]
                              float* __restrict__ h) {        // [N, d] contiguous
  __shared__ float As[kTileK][kPadRows];
  __shared__ float Bs[kTileK][kTileCols];
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int64_t row0 = static_cast<int64_t>(blockIdx.x) * kTileRows;
  const int64_t col0 = static_cast<int64_t>(blockIdx.y) * kTileCols;
  float acc[kMicro][kMicro];
  tile_dot(x, n, d, ldx, wt, d, d, row0, col0, As, Bs, acc);
  for (int i = 0; i < kMicro; ++i) {
    const int64_t row = row0 + ty + kThreadsY * i;
    for (int j = 0; j < kMicro; ++j) {
      const int64_t col = col0 + tx + kThreadsX * j;
      if (row < n && col < d) h[row * d + col] = acc[i][j] + bias[col];
    }
  }
}

// r[n] -= C[codes[n, level]]: one thread per element, grid-stride.
__global__ void subtract_codeword_kernel(float* __restrict__ r,  // [N, d], row stride ldr
                                         int64_t n, int64_t d, int64_t ldr,
                                         const float* __restrict__ C,      // [K, d]
                                         const int32_t* __restrict__ codes,  // [N, L]
                                         int L, int level) {
  const int64_t total = n * d;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < total; e += stride) {
    const int64_t i = e / d, j = e % d;
    r[i * ldr + j] -= C[static_cast<int64_t>(codes[i * L + level]) * d + j];
  }
}

// The fp32 argmax epilogue over a GEMM output g, levels [l0, l1): one warp per row, lanes over k, the (best,
// index) merged by xor shuffles and lane 0's broadcast (NaN scores cannot make lanes disagree).
__global__ void argmax_levels_kernel(const float* __restrict__ g,  // [N, ldg]: the columns of levels [l0, l1)
                                     int64_t ldg, int64_t n, const __grid_constant__ core::Tables t, int l0, int l1,
                                     const float* __restrict__ inv_s,  // [N] or nullptr
                                     int32_t* __restrict__ codes) {    // [N, L]
  const int lane = threadIdx.x % core::kWarp;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kRowsPerNormBlock + threadIdx.x / core::kWarp;
  if (row >= n) return;
  int32_t code[core::kMaxLevels];
  for (int l = 0; l < l0; ++l) code[l] = codes[row * t.L + l];
  const float s = inv_s != nullptr ? inv_s[row] : 1.0f;
  for (int l = l0; l < l1; ++l) {
    const core::LevelParams& p = t.p[l];
    const float* gr = g + row * ldg + (t.offset[l] - t.offset[l0]);
    core::Best best = core::best_init();
    for (int k = lane; k < p.K; k += core::kWarp) core::best_update(best, core::column_score(p, gr[k], s, code, k), k);
    for (int o = core::kWarp / 2; o > 0; o >>= 1) {
      const float os = __shfl_xor_sync(kFullMask, best.score, o);
      const int32_t oi = __shfl_xor_sync(kFullMask, best.index, o);
      core::best_update(best, os, oi);
    }
    code[l] = __shfl_sync(kFullMask, best.index, 0);
  }
  if (lane == 0)
    for (int l = l0; l < l1; ++l) codes[row * t.L + l] = code[l];
}

// The screen's exact rescoring of codeword column `col` (a row of t.mt) for one row: the dot product in core
// order (core/screen.h: lane j holds partials j and j + 32 of the 64, adds them, then the xor butterfly).
template <typename T>
__device__ __forceinline__ float rescore_dot(const T* __restrict__ xr, const float* __restrict__ mr, int64_t d,
                                             int lane) {
  float a0 = 0.0f, a1 = 0.0f;
  for (int64_t i0 = 0; i0 < d; i0 += core::kDotLanes) {
    const int64_t i = i0 + lane, j = i0 + lane + core::kWarp;
    if (i < d) a0 = core::mul_add(to_float(xr[i]), mr[i], a0);
    if (j < d) a1 = core::mul_add(to_float(xr[j]), mr[j], a1);
  }
  float v = core::add(a0, a1);
  for (int o = core::kWarp / 2; o > 0; o >>= 1) v = core::add(v, __shfl_xor_sync(kFullMask, v, o));
  return v;
}

// core::bracket of codeword k of level l for one row.
__device__ __forceinline__ void level_bracket(const core::Tables& t, int l, const uint16_t* __restrict__ gr,
                                              const int32_t* code, int k, const core::Bound& e, float s,
                                              float& lo, float& hi) {
  const core::LevelParams& p = t.p[l];
  const int64_t c = t.offset[l] + k;
  core::bracket(core::bf16_to_float(gr[c]), t.m16_norm[c], t.dm_norm[c], p.beta[k], core::correction(p, code, k),
                p.cterm[k], e, s, p.metric, lo, hi);
}

// The screen + exact rescoring for all levels: one warp per row, levels in order (the corrections need the
// earlier codes), lanes over k. Per level, the rule of core/screen.h, as the CPU executor applies it: the bar
// (warp max of lo), the candidates (ballot), one candidate wins unrescored, else the bar's codeword is
// rescored first and then, in increasing k, every other candidate whose upper bound reaches its exact score.
template <typename T>
__global__ void screen_rescore_kernel(const uint16_t* __restrict__ g16,  // [N, ldg] bf16 bits
                                      int64_t ldg,
                                      const T* __restrict__ x,           // [N, d], row stride ldx
                                      int64_t n, int64_t ldx, const __grid_constant__ core::Tables t,
                                      const float* __restrict__ inv_s,     // [N]
                                      const float* __restrict__ x16_norm,  // [N]
                                      const float* __restrict__ dx_norm,   // [N]
                                      int32_t* __restrict__ codes,         // [N, L]
                                      unsigned long long* __restrict__ rescored) {  // [1]
  const int lane = threadIdx.x % core::kWarp;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kRowsPerNormBlock + threadIdx.x / core::kWarp;
  if (row >= n) return;
  const uint16_t* gr = g16 + row * ldg;
  const T* xr = x + row * ldx;
  const float s = inv_s[row];
  const core::Bound e = core::row_bound(x16_norm[row], dx_norm[row], t.d);
  int32_t code[core::kMaxLevels];
  unsigned long long count = 0;
  for (int l = 0; l < t.L; ++l) {
    const core::LevelParams& p = t.p[l];
    const int64_t off = t.offset[l];
    core::Bar bar = core::bar_init();
    for (int k = lane; k < p.K; k += core::kWarp) {
      if (t.shadow[off + k]) continue;
      float lo, hi;
      level_bracket(t, l, gr, code, k, e, s, lo, hi);
      core::bar_update(bar, lo, k);
    }
    for (int o = core::kWarp / 2; o > 0; o >>= 1) {
      const float ol = __shfl_xor_sync(kFullMask, bar.lo, o);
      const int32_t ok = __shfl_xor_sync(kFullMask, bar.k, o);
      core::bar_update(bar, ol, ok);
    }
    int ncand = 0, first = -1;
    for (int k0 = 0; k0 < p.K; k0 += core::kWarp) {
      const int k = k0 + lane;
      bool c = false;
      if (k < p.K && !t.shadow[off + k]) {
        float lo, hi;
        level_bracket(t, l, gr, code, k, e, s, lo, hi);
        c = core::is_candidate(hi, bar.lo);
      }
      const unsigned m = __ballot_sync(kFullMask, c);
      if (first < 0 && m != 0u) first = k0 + __ffs(static_cast<int>(m)) - 1;
      ncand += __popc(m);
    }
    if (ncand == 1) {
      code[l] = first;
      continue;
    }
    const float* mt = t.mt + off * t.d;
    core::Best best = core::best_init();
    auto rescore_k = [&](int k) {
      const float dot = rescore_dot(xr, mt + static_cast<int64_t>(k) * t.d, t.d, lane);
      core::best_update(best, core::score_from_parts(dot, p.beta[k], s, core::correction(p, code, k), p.cterm[k],
                                                     p.metric), k);
      ++count;
    };
    if (bar.k >= 0) rescore_k(bar.k);
    const float exact = best.score;
    for (int k0 = 0; k0 < p.K; k0 += core::kWarp) {
      const int k = k0 + lane;
      bool c = false;
      if (k < p.K && !t.shadow[off + k]) {
        float lo, hi;
        level_bracket(t, l, gr, code, k, e, s, lo, hi);
        c = core::is_candidate(hi, bar.lo) && (bar.k < 0 || (k != bar.k && core::reaches(hi, exact)));
      }
      unsigned m = __ballot_sync(kFullMask, c);
      while (m != 0u) {
        rescore_k(k0 + __ffs(static_cast<int>(m)) - 1);
        m &= m - 1u;
      }
    }
    code[l] = best.index;
  }
  if (lane == 0) {
    for (int l = 0; l < t.L; ++l) codes[row * t.L + l] = code[l];
    if (count != 0u) atomicAdd(rescored, count);
  }
}

}  // namespace kernels
}  // namespace hermes
