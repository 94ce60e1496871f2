// CUDA launchers: grid shapes, dtype dispatch, the per-level loops, and a cudaGetLastError() check naming
// each kernel. The kernels themselves are in assign_kernels.cuh (compiled by the SIMT emulator too).
#include <stdexcept>
#include <string>
#include <type_traits>

#include "cuda/assign_cuda.h"
#include "cuda/assign_kernels.cuh"

namespace hermes {
namespace cuda {
namespace {

void check_launch(const char* kernel) {
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess)
    throw std::runtime_error(std::string("hermes: CUDA kernel ") + kernel + " failed: " + cudaGetErrorString(err));
}

cudaStream_t as_stream(const core::Exec& e) { return reinterpret_cast<cudaStream_t>(e.stream); }

template <class F>
void dispatch(int dtype, F&& f) {
  switch (dtype) {
    case core::kF32: f(static_cast<const float*>(nullptr)); break;
    case core::kF16: f(static_cast<const __half*>(nullptr)); break;
    case core::kBF16: f(static_cast<const __nv_bfloat16*>(nullptr)); break;
    default: throw std::invalid_argument("hermes: unsupported input dtype code " + std::to_string(dtype));
  }
}

unsigned grid_1d(int64_t work, int64_t per_block) {
  return static_cast<unsigned>((work + per_block - 1) / per_block);
}

constexpr int kRowThreads = kernels::kRowsPerNormBlock * core::kWarp;

// One level of the fp32 SIMT search: codes[:, level] from a . b (b = the level's columns of M, row stride ldb).
void gemm_argmax_level(const void* a, int dtype, int64_t n, int64_t d, int64_t lda, const float* b, int64_t ldb,
                       const core::LevelParams& p, const float* inv_s, int32_t* codes, const core::Exec& e) {
  dim3 block(kernels::kThreadsX, kernels::kThreadsY);
  dispatch(dtype, [&](auto tag) {
    using T = std::remove_const_t<std::remove_pointer_t<decltype(tag)>>;
    kernels::gemm_argmax_kernel<T><<<grid_1d(n, kernels::kTileRows), block, 0, as_stream(e)>>>(
        static_cast<const T*>(a), n, d, lda, b, ldb, p, inv_s, codes);
  });
  check_launch("gemm_argmax_kernel");
}

}  // namespace

int device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky "no driver" error
    return 0;
  }
  return n;
}

std::string device_error() {
  int n = 0;
  cudaError_t err = cudaGetDeviceCount(&n);
  if (err != cudaSuccess) {
    cudaGetLastError();
    if (err == cudaErrorInsufficientDriver)
      return "no usable NVIDIA driver: none is installed, or it is older than the CUDA " + runtime_version() +
             " runtime hermes was built with (" + cudaGetErrorString(err) + ")";
    if (err == cudaErrorNoDevice) return "no CUDA device is visible (cudaErrorNoDevice)";
    return std::string("CUDA runtime reports: ") + cudaGetErrorString(err);
  }
  return n == 0 ? "no CUDA device is visible" : "";
}

std::string runtime_version() {
  int v = 0;
  cudaRuntimeGetVersion(&v);
  return std::to_string(v / 1000) + "." + std::to_string((v % 1000) / 10);
}

void norms_split(const core::Rows& x, const core::Tables& t, float* inv_s, uint16_t* x16, float* x16_norm,
                 float* dx_norm, const core::Exec& e) {
  if (x.n == 0) return;
  dispatch(x.dtype, [&](auto tag) {
    using T = std::remove_const_t<std::remove_pointer_t<decltype(tag)>>;
    kernels::norms_split_kernel<T><<<grid_1d(x.n, kernels::kRowsPerNormBlock), kRowThreads, 0, as_stream(e)>>>(
        static_cast<const T*>(x.data), x.n, x.d, x.ld, t.wtb, t.bb, t.normalize, inv_s, x16, x16_norm, dx_norm);
  });
  check_launch("norms_split_kernel");
}

void screen_rescore(const uint16_t* g16, int64_t ldg, const core::Rows& x, const core::Tables& t, const float* inv_s,
                    const float* x16_norm, const float* dx_norm, int32_t* codes, int64_t* rescored,
                    const core::Exec& e) {
  if (x.n == 0) return;
  static_assert(sizeof(int64_t) == sizeof(unsigned long long), "the rescored counter is added to as 64-bit");
  dispatch(x.dtype, [&](auto tag) {
    using T = std::remove_const_t<std::remove_pointer_t<decltype(tag)>>;
    kernels::screen_rescore_kernel<T><<<grid_1d(x.n, kernels::kRowsPerNormBlock), kRowThreads, 0, as_stream(e)>>>(
        g16, ldg, static_cast<const T*>(x.data), x.n, x.ld, t, inv_s, x16_norm, dx_norm, codes,
        reinterpret_cast<unsigned long long*>(rescored));
  });
  check_launch("screen_rescore_kernel");
}

void argmax_levels(const float* g, int64_t ldg, const core::Rows& x, const core::Tables& t, const float* inv_s,
                   int32_t* codes, const core::Exec& e) {
  if (x.n == 0) return;
  if (g != nullptr) {
    kernels::argmax_levels_kernel<<<grid_1d(x.n, kernels::kRowsPerNormBlock), kRowThreads, 0, as_stream(e)>>>(
        g, ldg, x.n, t, 0, t.L, inv_s, codes);
    check_launch("argmax_levels_kernel");
    return;
  }
  for (int l = 0; l < t.L; ++l)
    gemm_argmax_level(x.data, x.dtype, x.n, x.d, x.ld, t.m + t.offset[l], t.cols, t.p[l], inv_s, codes, e);
}

void subtract_codeword(float* r, int64_t n, int64_t d, const float* C, const int32_t* codes, int L, int level,
                       const core::Exec& e) {
  if (n == 0) return;
  constexpr int kThreads = 256;
  int64_t blocks = (n * d + kThreads - 1) / kThreads;
  if (blocks > 65535 * 16) blocks = 65535 * 16;
  kernels::subtract_codeword_kernel<<<static_cast<unsigned>(blocks), kThreads, 0, as_stream(e)>>>(r, n, d, d, C,
                                                                                                  codes, L, level);
  check_launch("subtract_codeword_kernel");
}

void argmax_residual_levels(float* r, int64_t n, const core::Tables& t, const LevelGemm& gemm, int32_t* codes,
                            const core::Exec& e) {
  if (n == 0) return;
  for (int l = 0; l < t.L; ++l) {
    if (gemm) {
      const float* g = gemm(l);
      kernels::argmax_levels_kernel<<<grid_1d(n, kernels::kRowsPerNormBlock), kRowThreads, 0, as_stream(e)>>>(
          g, t.p[l].K, n, t, l, l + 1, nullptr, codes);
      check_launch("argmax_levels_kernel");
    } else {
      gemm_argmax_level(r, core::kF32, n, t.d, t.d, t.m + t.offset[l], t.cols, t.p[l], nullptr, codes, e);
    }
    if (l + 1 < t.L) subtract_codeword(r, n, t.d, t.c + t.offset[l] * t.d, codes, t.L, l, e);
  }
}

void normalize_rows(float* h, int64_t n, int64_t d, bool normalize, float* inv_s, const core::Exec& e) {
  if (n == 0) return;
  kernels::normalize_rows_kernel<<<grid_1d(n, kernels::kRowsPerNormBlock), kRowThreads, 0, as_stream(e)>>>(
      h, n, d, d, normalize, inv_s);
  check_launch("normalize_rows_kernel");
}

void rotate(const core::Rows& x, const float* wt, const float* bias, bool normalize, float* h, float* inv_s,
            const core::Exec& e) {
  if (x.n == 0) return;
  dim3 block(kernels::kThreadsX, kernels::kThreadsY);
  dim3 grid(grid_1d(x.n, kernels::kTileRows), grid_1d(x.d, kernels::kTileCols));
  dispatch(x.dtype, [&](auto tag) {
    using T = std::remove_const_t<std::remove_pointer_t<decltype(tag)>>;
    kernels::affine_kernel<T><<<grid, block, 0, as_stream(e)>>>(static_cast<const T*>(x.data), x.n, x.d, x.ld, wt,
                                                                 bias, h);
  });
  check_launch("affine_kernel");
  normalize_rows(h, x.n, x.d, normalize, inv_s, e);
}

}  // namespace cuda
}  // namespace hermes
