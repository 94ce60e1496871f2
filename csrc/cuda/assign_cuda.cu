// CUDA launchers: grid shapes, dtype dispatch and a cudaGetLastError() check naming each kernel.
#include <stdexcept>
#include <string>

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

cudaStream_t as_stream(std::uintptr_t s) { return reinterpret_cast<cudaStream_t>(s); }

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

void row_norms(const void* x, int dtype, int64_t n, int64_t d, int64_t ldx, const float* wtb, float bb,
               bool normalize, float* inv_s, std::uintptr_t stream) {
  if (n == 0) return;
  dispatch(dtype, [&](auto tag) {
    using T = std::remove_const_t<std::remove_pointer_t<decltype(tag)>>;
    kernels::row_norms_kernel<T><<<grid_1d(n, kernels::kRowsPerNormBlock), kernels::kRowsPerNormBlock * core::kWarp,
                                    0, as_stream(stream)>>>(static_cast<const T*>(x), n, d, ldx, wtb, bb,
                                                            normalize, inv_s);
  });
  check_launch("row_norms_kernel");
}

void normalize_rows(float* h, int64_t n, int64_t d, int64_t ldh, bool normalize, float* inv_s,
                    std::uintptr_t stream) {
  if (n == 0) return;
  kernels::normalize_rows_kernel<<<grid_1d(n, kernels::kRowsPerNormBlock), kernels::kRowsPerNormBlock * core::kWarp,
                                   0, as_stream(stream)>>>(h, n, d, ldh, normalize, inv_s);
  check_launch("normalize_rows_kernel");
}

void gemm_argmin(const void* a, int dtype, int64_t n, int64_t d, int64_t lda, const float* b, int64_t ldb,
                 const core::LevelParams& p, const float* inv_s, int32_t* codes, std::uintptr_t stream) {
  if (n == 0) return;
  dim3 block(kernels::kThreadsX, kernels::kThreadsY);
  dispatch(dtype, [&](auto tag) {
    using T = std::remove_const_t<std::remove_pointer_t<decltype(tag)>>;
    kernels::gemm_argmin_kernel<T><<<grid_1d(n, kernels::kTileRows), block, 0, as_stream(stream)>>>(
        static_cast<const T*>(a), n, d, lda, b, ldb, p, inv_s, codes);
  });
  check_launch("gemm_argmin_kernel");
}

void affine(const void* x, int dtype, int64_t n, int64_t d, int64_t ldx, const float* wt, const float* bias,
            float* h, std::uintptr_t stream) {
  if (n == 0) return;
  dim3 block(kernels::kThreadsX, kernels::kThreadsY);
  dim3 grid(grid_1d(n, kernels::kTileRows), grid_1d(d, kernels::kTileCols));
  dispatch(dtype, [&](auto tag) {
    using T = std::remove_const_t<std::remove_pointer_t<decltype(tag)>>;
    kernels::affine_kernel<T><<<grid, block, 0, as_stream(stream)>>>(static_cast<const T*>(x), n, d, ldx, wt, bias, h);
  });
  check_launch("affine_kernel");
}

void subtract_codeword(float* r, int64_t n, int64_t d, int64_t ldr, const float* C, const int32_t* codes, int L,
                       int level, std::uintptr_t stream) {
  if (n == 0) return;
  constexpr int kThreads = 256;
  int64_t blocks = (n * d + kThreads - 1) / kThreads;
  if (blocks > 65535 * 16) blocks = 65535 * 16;
  kernels::subtract_codeword_kernel<<<static_cast<unsigned>(blocks), kThreads, 0, as_stream(stream)>>>(
      r, n, d, ldr, C, codes, L, level);
  check_launch("subtract_codeword_kernel");
}

}  // namespace cuda
}  // namespace hermes
