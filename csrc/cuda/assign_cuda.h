// CUDA launchers for hermes (plain C++ declarations, so the bindings compile without nvcc).
// Pointers are device pointers owned by the caller (torch); every launch goes on `stream`.
#pragma once

#include <cstdint>
#include <string>

#include "core/hermes_core.h"

namespace hermes {
namespace cuda {

int device_count();          // 0 when built without CUDA or when no driver/device is present
std::string device_error();  // why device_count() is 0 ("" when it is not)
std::string runtime_version();

void row_norms(const void* x, int dtype, int64_t n, int64_t d, int64_t ldx, const float* wtb, float bb,
               bool normalize, float* inv_s, std::uintptr_t stream);
void normalize_rows(float* h, int64_t n, int64_t d, int64_t ldh, bool normalize, float* inv_s,
                    std::uintptr_t stream);
void gemm_argmin(const void* a, int dtype, int64_t n, int64_t d, int64_t lda, const float* b, int64_t ldb,
                 const core::LevelParams& p, const float* inv_s, int32_t* codes, std::uintptr_t stream);
void affine(const void* x, int dtype, int64_t n, int64_t d, int64_t ldx, const float* wt, const float* bias,
            float* h, std::uintptr_t stream);
void subtract_codeword(float* r, int64_t n, int64_t d, int64_t ldr, const float* C, const int32_t* codes, int L,
                       int level, std::uintptr_t stream);

}  // namespace cuda
}  // namespace hermes
