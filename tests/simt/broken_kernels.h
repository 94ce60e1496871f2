// Deliberately broken copies of gemm_argmax_kernel (and a spinning kernel) that the SIMT harness must catch.
// Tests only: each Bug below is one line away from csrc/cuda/assign_kernels.cuh; test_simt.py asserts that
// the emulator reports it (ASan/UBSan, deadlock, watchdog) or that the results differ from the CPU executor.
#pragma once

#include "cuda/assign_kernels.cuh"

namespace broken {

using namespace hermes::kernels;
namespace core = hermes::core;

enum class Bug {
  kTailOob,          // the A tile's tail test is gk <= d: reads one element past the last row of a
  kSharedOob,        // the B tile's load loop runs e <= 16 * 64: writes Bs[16][0], one row past shared memory
  kEarlyExit,        // threads whose first row is out of range return before the mainloop's __syncthreads
  kNoSecondBarrier,  // the __syncthreads after the inner product is missing: next stage overwrites live tiles
};

template <Bug kBug, typename T>
__device__ __forceinline__ void tile_dot(const T* __restrict__ a, int64_t n, int64_t d, int64_t lda,
                                         const float* __restrict__ b, int64_t ldb, int64_t ncols, int64_t row0,
                                         int64_t col0, float (&As)[kTileK][kTileRows],
                                         float (&Bs)[kTileK][kTileCols], float (&acc)[kMicro][kMicro]) {
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int t = ty * kThreadsX + tx;
  for (int i = 0; i < kMicro; ++i)
    for (int j = 0; j < kMicro; ++j) acc[i][j] = 0.0f;
  for (int64_t k0 = 0; k0 < d; k0 += kTileK) {
    for (int e = t; e < kTileRows * kTileK; e += kGemmThreads) {
      const int r = e / kTileK, kk = e % kTileK;
      const int64_t gr = row0 + r, gk = k0 + kk;
      const bool in = kBug == Bug::kTailOob ? (gr < n && gk <= d) : (gr < n && gk < d);
      As[kk][r] = in ? to_float(a[gr * lda + gk]) : 0.0f;
    }
    const int b_end = kBug == Bug::kSharedOob ? kTileK * kTileCols + 1 : kTileK * kTileCols;
    for (int e = t; e < b_end; e += kGemmThreads) {
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
    if (kBug != Bug::kNoSecondBarrier) __syncthreads();
  }
}

template <Bug kBug, typename T>
__global__ void gemm_argmax_bug_kernel(const T* __restrict__ a, int64_t n, int64_t d, int64_t lda,
                                       const float* __restrict__ b, int64_t ldb, core::LevelParams p,
                                       const float* __restrict__ inv_s, int32_t* __restrict__ codes) {
  __shared__ float As[kTileK][kTileRows];
  __shared__ float Bs[kTileK][kTileCols];
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int64_t row0 = static_cast<int64_t>(blockIdx.x) * kTileRows;
  if (kBug == Bug::kEarlyExit && row0 + ty >= n) return;
  core::Best best[kMicro];
  for (int i = 0; i < kMicro; ++i) best[i] = core::best_init();
  float acc[kMicro][kMicro];
  for (int64_t col0 = 0; col0 < p.K; col0 += kTileCols) {
    tile_dot<kBug>(a, n, d, lda, b, ldb, p.K, row0, col0, As, Bs, acc);
    for (int i = 0; i < kMicro; ++i) {
      const int64_t row = row0 + ty + kThreadsY * i;
      if (row >= n) continue;
      const float s = inv_s != nullptr ? inv_s[row] : 1.0f;
      const int32_t* code_row = codes + row * p.L;
      for (int j = 0; j < kMicro; ++j) {
        const int64_t col = col0 + tx + kThreadsX * j;
        if (col < p.K) {
          const int kc = static_cast<int>(col);
          core::best_update(best[i], core::column_score(p, acc[i][j], s, code_row, kc), kc);
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

template <typename T>
constexpr auto gemm_argmax_tail_oob_kernel = gemm_argmax_bug_kernel<Bug::kTailOob, T>;
template <typename T>
constexpr auto gemm_argmax_shared_oob_kernel = gemm_argmax_bug_kernel<Bug::kSharedOob, T>;
template <typename T>
constexpr auto gemm_argmax_early_exit_kernel = gemm_argmax_bug_kernel<Bug::kEarlyExit, T>;
template <typename T>
constexpr auto gemm_argmax_no_second_barrier_kernel = gemm_argmax_bug_kernel<Bug::kNoSecondBarrier, T>;

// A copy of screen_rescore_kernel whose candidate rule is hi >= bar instead of core::is_candidate (!(hi < bar)):
// it reads the same on finite bounds, but a codeword with a NaN upper bound (a bf16 score that is NaN or
// overflowed) is silently dropped. The bit-for-bit comparison with the CPU executor must catch it.
template <typename T>
__global__ void screen_rescore_nan_dropped_kernel(const uint16_t* __restrict__ g16, int64_t ldg,
                                                  const T* __restrict__ x, int64_t n, int64_t ldx, core::Tables t,
                                                  const float* __restrict__ inv_s, const float* __restrict__ x16_norm,
                                                  const float* __restrict__ dx_norm, int32_t* __restrict__ codes,
                                                  unsigned long long* __restrict__ rescored) {
  auto candidate = [](float hi, float bar) { return hi >= bar; };  // Bug: NaN is not a candidate
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
        c = candidate(hi, bar.lo);
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
        c = candidate(hi, bar.lo) && (bar.k < 0 || (k != bar.k && core::reaches(hi, exact)));
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

// Intra-block spin-wait: thread 0 waits for a flag that thread 1 sets. Cooperative fibers never preempt,
// so this hangs; the watchdog must turn it into an error naming the block and thread.
__global__ void spin_kernel(int* flag) {
  volatile int* f = flag;
  if (threadIdx.x == 0)
    while (*f == 0) {
    }
  if (threadIdx.x == 1) *f = 1;
}

// Misuses of barriers and warp intrinsics that the emulator must refuse (simt_driver misuse NAME).
__global__ void divergent_barrier_kernel(int* out) {
  if (threadIdx.x < 32) {
    __syncthreads();
  } else {
    __syncthreads();  // a different barrier: undefined behavior in CUDA
  }
  out[threadIdx.x] = 1;
}

__global__ void shfl_mask_excludes_self_kernel(int* out) {
  out[threadIdx.x] = __shfl_xor_sync(0x0000ffffu, static_cast<int>(threadIdx.x), 1);  // lanes 16-31 not in mask
}

__global__ void shfl_missing_lane_kernel(int* out) {  // launched with 40 threads: lanes 8-31 of warp 1 do not exist
  out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, static_cast<int>(threadIdx.x), 1);
}

}  // namespace broken
