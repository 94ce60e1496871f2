// CPU executors: the same per-row steps as the CUDA kernels, calling csrc/core, threaded over rows.
#pragma once

#include <cstdint>
#include <string>

#include "core/hermes_core.h"

namespace hermes {
namespace cpu {

// inv_s[n] = 1/||W x_n + b|| (folded path, orthogonal W) in the row_norms kernel's lane order.
// Returns the first row with a non-finite entry, or -1.
int64_t row_norms(const float* x,    // [N, d], row stride ldx
                  int64_t n, int64_t d, int64_t ldx,
                  const float* wtb,  // [d] W^T b
                  float bb, bool normalize,
                  float* inv_s,      // [N] out
                  int nthreads);

// row_norms for a contiguous x, then x16 = bf16(x) (round to nearest even) for the screening GEMM, with
// ||x16|| and ||x - x16|| per row for its error bound.
int64_t row_norms_bf16(const float* x, int64_t n, int64_t d, const float* wtb, float bb, bool normalize,
                       float* inv_s, uint16_t* x16, float* x16_norm, float* dx_norm, int nthreads);

// out = float(in) for IEEE half bits (exact), threaded.
void f16_to_f32(const uint16_t* in, int64_t n, float* out, int nthreads);

// Scales each row of h to unit norm (when normalize) in the normalize kernel's lane order.
// Returns the first row with a non-finite entry, or -1.
int64_t normalize_rows(float* h,  // [N, d], row stride ldh, in place
                       int64_t n, int64_t d, int64_t ldh, bool normalize, int nthreads);

// codes[n, p.level] = argmax_k column_score(g[n, k]) given the GEMM block g = A B_l.
void argmin_level(const float* g,        // [N, K], row stride ldg
                  int64_t ldg,
                  const core::LevelParams& p,
                  const float* inv_s,    // [N] or nullptr (= 1)
                  int64_t n,
                  int32_t* codes,        // [N, L]: reads columns < level, writes column level
                  int nthreads);

// r[n] -= C[codes[n, level]] (explicit path).
void subtract_codeword(float* r,               // [N, d], row stride ldr
                       int64_t n, int64_t d, int64_t ldr,
                       const float* C,         // [K, d]
                       const int32_t* codes,   // [N, L]
                       int L, int level, int nthreads);

// One level of the bf16-screened search: the level's params and its column offset in the GEMM output.
// Whether the screen's AVX-512 paths (candidate selection, four-way rescoring) run: the CPU has AVX-512F
// and HERMES_CPU_ISA is not "generic". Fixed at the first call.
bool use_avx512();

// What the row loops run on: the OpenMP team of the runtime torch already loaded (libgomp or Intel's, through
// the GOMP ABI; hermes links none of its own), or std::thread when none is loaded or HERMES_CPU_THREADS=std.
std::string thread_pool();

struct ScreenLevel {
  core::LevelParams p;
  int64_t offset;
  // Codewords that are exact duplicates of a lower-index one at this level: their exact scores equal that
  // one's, so the lowest-index tie rule means they never win and the screen never rescores them.
  const int32_t* shadowed = nullptr;
  int n_shadowed = 0;
};

// All levels of the folded search from a bf16 GEMM g16 = bf16(x) bf16(M) (fp32 accumulation, bf16 output):
// per row and level, a rigorous error bound on every bf16 score brackets the exact fp32 score (the score is
// a monotone function of the dot product), and only the codewords whose upper bound reaches the best lower
// bound are rescored exactly in fp32 against mt. Returns the number of rescored (row, level, codeword)s.
int64_t assign_screened(const uint16_t* g16,  // [N, sum K] bf16 bits, row stride ldg
                        int64_t ldg,
                        const float* x,       // [N, d] fp32 rows
                        int64_t n, int64_t d,
                        const float* mt,        // [sum K, d]: M^T
                        const float* m16_norm,  // [sum K]: ||bf16(M)[:, k]||, rounded up
                        const float* dm_norm,   // [sum K]: ||M[:, k] - bf16(M)[:, k]||, rounded up
                        const ScreenLevel* levels, int L,
                        const float* inv_s,     // [N]
                        const float* x16_norm,  // [N]: ||bf16(x)||
                        const float* dx_norm,   // [N]: ||x - bf16(x)||
                        int32_t* codes,         // [N, L]
                        int nthreads);

// Kernel-order reference executors: the dot products in the kernel's k order (one fmaf per k),
// for bit-exact comparison with the CUDA kernels (run on a GPU or under the SIMT emulator).
void gemm_argmin_exact(const float* a,   // [N, d], row stride lda
                       int64_t n, int64_t d, int64_t lda,
                       const float* b,   // [d, K], row stride ldb
                       int64_t ldb,
                       const core::LevelParams& p,
                       const float* inv_s,  // [N] or nullptr
                       int32_t* codes, int nthreads);

// h = x W^T + b (no normalization), dot products in the kernel's k order.
void affine_exact(const float* x,  // [N, d], row stride ldx
                  int64_t n, int64_t d, int64_t ldx,
                  const float* wt,  // [d, d] = W^T row-major
                  const float* b,   // [d]
                  float* h,         // [N, d] contiguous
                  int nthreads);

}  // namespace cpu
}  // namespace hermes
