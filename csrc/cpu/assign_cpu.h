// CPU executor: the operations of csrc/core/ops.inc (the CUDA executor exports the same ones), threaded over
// rows, calling csrc/core for every number; the GEMMs come from torch's BLAS in Python.
#pragma once

#include <cstdint>
#include <functional>
#include <string>

#include "core/hermes_core.h"
#include "core/screen.h"

namespace hermes {
namespace cpu {

#include "core/ops.inc"

// out = float(in) for IEEE half bits (exact), threaded (the CPU reads float16 input through this).
void f16_to_f32(const uint16_t* in, int64_t n, float* out, int nthreads);

// Whether the screen's AVX-512 paths (candidate selection, four-way rescoring) run: the CPU has AVX-512F
// and HERMES_CPU_ISA is not "generic". Fixed at the first call.
bool use_avx512();

// What the row loops run on: the OpenMP team of the runtime torch already loaded (libgomp or Intel's, through
// the GOMP ABI; hermes links none of its own), or std::thread when none is loaded or HERMES_CPU_THREADS=std.
std::string thread_pool();

}  // namespace cpu
}  // namespace hermes
