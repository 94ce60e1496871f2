// CUDA executor: the operations of csrc/core/ops.inc (the CPU executor exports the same ones), as launchers
// (plain C++ declarations, so the bindings compile without nvcc). Pointers are device pointers owned by the
// caller (torch); every launch goes on e.stream and is followed by a cudaGetLastError() check naming it.
#pragma once

#include <cstdint>
#include <functional>
#include <string>

#include "core/hermes_core.h"
#include "core/screen.h"

namespace hermes {
namespace cuda {

#include "core/ops.inc"

int device_count();          // 0 when built without CUDA or when no driver/device is present
std::string device_error();  // why device_count() is 0 ("" when it is not)
std::string runtime_version();

}  // namespace cuda
}  // namespace hermes
