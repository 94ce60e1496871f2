// Stand-ins for the CUDA launchers in a build without CUDA: no device, and a clear error on use.
#include <stdexcept>
#include <string>

#include "cuda/assign_cuda.h"

namespace hermes {
namespace cuda {
namespace {
[[noreturn]] void no_cuda() {
  throw std::runtime_error("hermes was built without CUDA (HERMES_CUDA=OFF or nvcc not found): "
                           "CUDA tensors are not supported by this build");
}
}  // namespace

int device_count() { return 0; }
std::string device_error() { return "hermes was built without CUDA"; }
std::string runtime_version() { return ""; }
void row_norms(const void*, int, int64_t, int64_t, int64_t, const float*, float, bool, float*, std::uintptr_t) {
  no_cuda();
}
void normalize_rows(float*, int64_t, int64_t, int64_t, bool, float*, std::uintptr_t) { no_cuda(); }
void gemm_argmin(const void*, int, int64_t, int64_t, int64_t, const float*, int64_t, const core::LevelParams&,
                 const float*, int32_t*, std::uintptr_t) {
  no_cuda();
}
void affine(const void*, int, int64_t, int64_t, int64_t, const float*, const float*, float*, std::uintptr_t) {
  no_cuda();
}
void subtract_codeword(float*, int64_t, int64_t, int64_t, const float*, const int32_t*, int, int, std::uintptr_t) {
  no_cuda();
}

}  // namespace cuda
}  // namespace hermes
