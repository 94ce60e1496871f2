// Stand-ins for the CUDA executor in a build without CUDA: no device, and a clear error on use.
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
void norms_split(const core::Rows&, const core::Tables&, float*, uint16_t*, float*, float*, const core::Exec&) {
  no_cuda();
}
void screen_rescore(const uint16_t*, int64_t, const core::Rows&, const core::Tables&, const float*, const float*,
                    const float*, int32_t*, int64_t*, const core::Exec&) {
  no_cuda();
}
void argmax_levels(const float*, int64_t, const core::Rows&, const core::Tables&, const float*, int32_t*,
                   const core::Exec&) {
  no_cuda();
}
void argmax_residual_levels(float*, int64_t, const core::Tables&, const LevelGemm&, int32_t*, const core::Exec&) {
  no_cuda();
}
void rotate(const core::Rows&, const float*, const float*, bool, float*, float*, const core::Exec&) { no_cuda(); }
void normalize_rows(float*, int64_t, int64_t, bool, float*, const core::Exec&) { no_cuda(); }
void subtract_codeword(float*, int64_t, int64_t, const float*, const int32_t*, int, int, const core::Exec&) {
  no_cuda();
}

}  // namespace cuda
}  // namespace hermes
