// The emulator's own checks: built-in indices, __syncthreads over shared memory, warp shuffles (xor,
// down, up, idx, width < 32, partial warps), ballot and atomics. Run by `simt_driver selftest`.
#pragma once

#include <cstdio>
#include <vector>

namespace selftest {

// Each thread records its global linear id once; blockDim/gridDim/blockIdx/threadIdx with x fastest.
__global__ void indices_kernel(int* seen, int* bad) {
  const unsigned tl = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
  const unsigned bl = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
  const unsigned nt = blockDim.x * blockDim.y * blockDim.z;
  atomicAdd(&seen[bl * nt + tl], 1);
  if (threadIdx.x >= blockDim.x || threadIdx.y >= blockDim.y || threadIdx.z >= blockDim.z) atomicAdd(bad, 1);
}

// Shared memory is shared by the block and a barrier orders writes before reads; the reversal
// needs every thread's write, so any missing barrier or private copy shows.
__global__ void shared_reverse_kernel(int* out) {
  __shared__ int s[128];
  const int t = threadIdx.x;
  s[t] = t * 7 + static_cast<int>(blockIdx.x);
  __syncthreads();
  const int v = s[blockDim.x - 1 - t];
  __syncthreads();
  s[t] = v + 1;
  __syncthreads();
  out[blockIdx.x * blockDim.x + t] = s[t];
}

// out[t, 0..7]: xor butterfly sum, down(1), up(1), idx(3), xor(8) with width 16, ballot(odd lanes),
// down(2) with width 8, all/any; a trailing partial warp (block of 72 threads) does the butterfly only.
__global__ void warp_kernel(int* out, int partial_lanes) {
  const int t = threadIdx.x, lane = t % 32, w = t / 32;
  const int nl = (w == static_cast<int>(blockDim.x) / 32) ? partial_lanes : 32;
  const unsigned mask = nl == 32 ? 0xffffffffu : ((1u << nl) - 1u);
  int v = t, s = v;
  for (int o = 16; o > 0; o >>= 1)
    if (o < nl) s += __shfl_xor_sync(mask, s, o);
  out[t * 8 + 0] = s;
  if (nl < 32) return;  // the other ops would read lanes that do not exist (undefined in CUDA)
  out[t * 8 + 1] = __shfl_down_sync(mask, v, 1);
  out[t * 8 + 2] = __shfl_up_sync(mask, v, 1);
  out[t * 8 + 3] = __shfl_sync(mask, v, 3);
  out[t * 8 + 4] = __shfl_xor_sync(mask, v, 8, 16);
  out[t * 8 + 5] = static_cast<int>(__ballot_sync(mask, lane & 1));
  out[t * 8 + 6] = __shfl_down_sync(mask, v, 2, 8);
  out[t * 8 + 7] = __all_sync(mask, v >= 0) && !__any_sync(mask, v < 0);
}

inline int check(bool ok, const char* what, int a = 0, int b = 0) {
  if (!ok) fprintf(stderr, "selftest: %s (%d vs %d)\n", what, a, b);
  return ok ? 0 : 1;
}

inline int run_all() {
  int fails = 0;
  {
    const dim3 grid(3, 2, 2), block(4, 3, 2);
    std::vector<int> seen(12 * 24, 0);
    int bad = 0;
    simt::launch(grid, block, indices_kernel, seen.data(), &bad);
    for (size_t i = 0; i < seen.size(); ++i) fails += check(seen[i] == 1, "indices: thread seen once", (int)i, seen[i]);
    fails += check(bad == 0, "indices: threadIdx < blockDim", bad, 0);
  }
  {
    const int nb = 3, nt = 128;
    std::vector<int> out(nb * nt);
    simt::launch(nb, nt, shared_reverse_kernel, out.data());
    for (int b = 0; b < nb; ++b)
      for (int t = 0; t < nt; ++t)
        fails += check(out[b * nt + t] == (nt - 1 - t) * 7 + b + 1, "shared reverse", out[b * nt + t], t);
  }
  {
    const int nt = 72, partial = nt % 32;  // warps of 32, 32 and 8 lanes
    std::vector<int> out(nt * 8);
    simt::launch(1, nt, warp_kernel, out.data(), partial);
    for (int t = 0; t < nt; ++t) {
      const int lane = t % 32, base = t - lane, nl = (t / 32 == nt / 32) ? partial : 32;
      int sum = 0;
      for (int l = 0; l < nl; ++l) sum += base + l;
      const int* o = &out[t * 8];
      fails += check(o[0] == sum, "xor butterfly sum", o[0], sum);
      if (nl < 32) continue;
      fails += check(o[1] == (lane + 1 < nl ? t + 1 : t), "shfl_down", o[1], t);
      fails += check(o[2] == (lane >= 1 ? t - 1 : t), "shfl_up", o[2], t);
      fails += check(o[3] == base + 3, "shfl idx", o[3], base + 3);
      const int xs = lane ^ 8;
      fails += check(o[4] == (xs < nl ? base + xs : t), "shfl_xor width 16", o[4], t);
      unsigned odd = 0;
      for (int l = 1; l < nl; l += 2) odd |= 1u << l;
      fails += check(static_cast<unsigned>(o[5]) == odd, "ballot", o[5], static_cast<int>(odd));
      const int ds = lane + 2;
      fails += check(o[6] == ((ds / 8 == lane / 8 && ds < nl) ? t + 2 : t), "shfl_down width 8", o[6], t);
      fails += check(o[7] == 1, "all/any", o[7], 1);
    }
  }
  return fails;
}

}  // namespace selftest
