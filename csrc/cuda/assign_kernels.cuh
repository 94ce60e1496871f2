// The hermes CUDA kernels (bodies only; launchers live in assign_cuda.cu so the SIMT emulator can
// compile these with g++). Every per-row number comes from csrc/core.
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

namespace hermes {
namespace kernels {

constexpr int kTileRows = 64;     // BM: rows per CTA
constexpr int kTileCols = 64;     // BN: columns per column tile
constexpr int kTileK = 16;        // BK: depth of one shared-memory stage
constexpr int kThreadsX = 16;     // threads along columns
constexpr int kThreadsY = 16;     // threads along rows
constexpr int kMicro = 4;         // each thread owns 4 rows x 4 columns, strided by 16
constexpr int kGemmThreads = kThreadsX * kThreadsY;
constexpr int kRowsPerNormBlock = 8;
constexpr int kPadRows = kTileRows + 1;  // As row pitch: the transposed stores hit 16 distinct banks  // one warp per row, 8 warps per block
constexpr unsigned kFullMask = 0xffffffffu;

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

// One warp per row: lane partials in core order, then the xor butterfly.
template <typename T>
__global__ void row_norms_kernel(const T* __restrict__ x,      // [N, d], row stride ldx
                                 int64_t n, int64_t d, int64_t ldx,
                                 const float* __restrict__ wtb,  // [d]
                                 float bb, bool normalize,
                                 float* __restrict__ inv_s) {    // [N]
  const int lane = threadIdx.x % core::kWarp;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kRowsPerNormBlock + threadIdx.x / core::kWarp;
  if (row >= n) return;  // whole warps leave together: the row is per-warp
  const T* xr = x + row * ldx;
  float xx = 0.0f, wx = 0.0f;
  for (int64_t i = lane; i < d; i += core::kWarp) core::norm_step(to_float(xr[i]), wtb[i], xx, wx);
  for (int o = core::kWarp / 2; o > 0; o >>= 1) {
    xx += __shfl_xor_sync(kFullMask, xx, o);
    wx += __shfl_xor_sync(kFullMask, wx, o);
  }
  if (lane == 0) inv_s[row] = core::inv_norm(xx, wx, bb, normalize);
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
  for (int o = core::kWarp / 2; o > 0; o >>= 1) ss += __shfl_xor_sync(kFullMask, ss, o);
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

// CTA = 64 rows x all K columns of one level, 64-column tiles; a running (best, index) per row,
// merged across the 16 column threads of a row with xor shuffles (a row's threads share a half-warp).
template <typename T>
__global__ void gemm_argmin_kernel(const T* __restrict__ a,      // [N, d], row stride lda
                                   int64_t n, int64_t d, int64_t lda,
                                   const float* __restrict__ b,  // [d, K], row stride ldb
                                   int64_t ldb,
                                   core::LevelParams p,
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

// Batched rotation h = x W^T + b: CTA = 64 rows x 64 output columns, same mainloop as gemm_argmin.
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

}  // namespace kernels
}  // namespace hermes
