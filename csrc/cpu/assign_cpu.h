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

// Corpus-scale metrics. unit_rows: u[r] = x[r] / ||x[r]|| (float16 bits when half, else float32; rows of d
// contiguous values), norms[r] = ||x[r]|| in float64; a zero row stays zero; a row with NaN or Inf gets u = 0,
// norm 0. Returns the first such row, or -1.
int64_t unit_rows(const void* x, bool half, int64_t n, int64_t d, float* u, double* norms, int nthreads);

// out[j] = sum of rows[starts[j] .. ends[j]) in float64; rows float32 [n, d], out [nruns, d].
void run_sums(const float* rows, int64_t d, const int64_t* starts, const int64_t* ends, int64_t nruns,
              double* out, int nthreads);

// Reads row i (row_bytes bytes at byte offset offsets[i] of the file descriptor fd) into out + i * row_bytes
// with pread, threaded. Returns the first row the file ended in (or that failed), or -1; *err gets an errno of a
// failed read, or 0.
int64_t pread_rows(int fd, const int64_t* offsets, int64_t n, int64_t row_bytes, char* out, int* err, int nthreads);

// Whether the AVX-512 paths (the screen's candidate selection and four-way rescoring, the half conversion) run:
// the CPU has AVX-512F and HERMES_CPU_ISA is neither "generic" nor "avx2". Fixed at the first call.
bool use_avx512();

// How float16 input is converted: "avx512" (16 per instruction), "f16c" (8; AVX + F16C, HERMES_CPU_ISA=avx2 or a
// CPU without AVX-512) or "scalar" (HERMES_CPU_ISA=generic, or neither). Fixed at the first call.
std::string half_convert();

// What the row loops run on: the OpenMP team of the runtime torch already loaded (libgomp or Intel's, through
// the GOMP ABI; hermes links none of its own), or std::thread when none is loaded or HERMES_CPU_THREADS=std.
std::string thread_pool();

}  // namespace cpu
}  // namespace hermes
