// Bindings for the assignment kernels: CPU executors over numpy buffers, CUDA launchers over raw
// device pointers + torch's current stream. Python validates user input; C++ re-checks shapes.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <stdexcept>
#include <string>
#include <vector>

#include "cpu/assign_cpu.h"
#include "cuda/assign_cuda.h"

namespace py = pybind11;
using hermes::core::LevelParams;

namespace {

using F32 = py::array_t<float, py::array::c_style>;
using I32 = py::array_t<int32_t, py::array::c_style>;

void require(bool ok, const std::string& msg) {
  if (!ok) throw std::invalid_argument("hermes._C: " + msg);
}

void require_2d(const py::array& a, const char* name) {
  require(a.ndim() == 2, std::string(name) + " must be 2-d, got ndim=" + std::to_string(a.ndim()));
}

const float* opt_ptr(const std::optional<F32>& a) { return a ? a->data() : nullptr; }

LevelParams make_params(int K, int level, int L, int metric, const float* beta, const float* cterm,
                        const std::vector<const float*>& T) {
  require(K > 0, "K must be positive");
  require(L >= 1 && L <= hermes::core::kMaxLevels, "L must be in [1, 8]");
  require(level >= 0 && level < L, "level must be in [0, L)");
  require(metric == hermes::core::kL2 || metric == hermes::core::kCos, "metric must be 0 (l2) or 1 (cos)");
  require(T.empty() || static_cast<int>(T.size()) == level, "T must hold one table per earlier level");
  LevelParams p{};
  p.K = K;
  p.level = level;
  p.L = L;
  p.metric = metric;
  p.beta = beta;
  p.cterm = cterm;
  for (int j = 0; j < hermes::core::kMaxLevels; ++j) p.T[j] = j < static_cast<int>(T.size()) ? T[j] : nullptr;
  return p;
}

LevelParams cpu_params(int K, int level, int L, int metric, const std::optional<F32>& beta, const F32& cterm,
                       const std::vector<F32>& T) {
  require(cterm.ndim() == 1 && cterm.shape(0) == K, "cterm must be [K]");
  require(!beta || (beta->ndim() == 1 && beta->shape(0) == K), "beta must be [K]");
  std::vector<const float*> tp;
  for (const auto& t : T) {
    require_2d(t, "T[j]");
    require(t.shape(1) == K, "T[j] must have K columns");
    tp.push_back(t.data());
  }
  return make_params(K, level, L, metric, opt_ptr(beta), cterm.data(), tp);
}

template <class T>
const T* dptr(std::uintptr_t p) { return reinterpret_cast<const T*>(p); }
template <class T>
T* mptr(std::uintptr_t p) { return reinterpret_cast<T*>(p); }

}  // namespace

void bind_assign(py::module_& m) {
  m.def(
      "row_norms_cpu",
      [](const F32& x, const F32& wtb, float bb, bool normalize, F32& inv_s, int nthreads) {
        require_2d(x, "x");
        require(wtb.ndim() == 1 && wtb.shape(0) == x.shape(1), "wtb must be [d]");
        require(inv_s.ndim() == 1 && inv_s.shape(0) == x.shape(0), "inv_s must be [N]");
        float* out = inv_s.mutable_data();
        py::gil_scoped_release nogil;
        return hermes::cpu::row_norms(x.data(), x.shape(0), x.shape(1), x.shape(1), wtb.data(), bb, normalize, out,
                                      nthreads);
      },
      py::arg("x").noconvert(), py::arg("wtb").noconvert(), py::arg("bb"), py::arg("normalize"),
      py::arg("inv_s").noconvert(), py::arg("nthreads"),
      "inv_s[N] = 1/||W x + b|| from x [N, d] and W^T b [d]; returns the first non-finite row or -1");

  m.def(
      "row_norms_bf16_cpu",
      [](const F32& x, const F32& wtb, float bb, bool normalize, F32& inv_s, py::array_t<int16_t, py::array::c_style>& x16,
         F32& x16_norm, F32& dx_norm, int nthreads) {
        require_2d(x, "x");
        require(wtb.ndim() == 1 && wtb.shape(0) == x.shape(1), "wtb must be [d]");
        require(inv_s.ndim() == 1 && inv_s.shape(0) == x.shape(0), "inv_s must be [N]");
        require(x16.ndim() == 2 && x16.shape(0) == x.shape(0) && x16.shape(1) == x.shape(1), "x16 must be [N, d]");
        require(x16_norm.ndim() == 1 && x16_norm.shape(0) == x.shape(0) && dx_norm.ndim() == 1 &&
                    dx_norm.shape(0) == x.shape(0), "x16_norm and dx_norm must be [N]");
        float* out = inv_s.mutable_data();
        uint16_t* o16 = reinterpret_cast<uint16_t*>(x16.mutable_data());
        float *xn = x16_norm.mutable_data(), *dn = dx_norm.mutable_data();
        py::gil_scoped_release nogil;
        return hermes::cpu::row_norms_bf16(x.data(), x.shape(0), x.shape(1), wtb.data(), bb, normalize, out, o16, xn,
                                           dn, nthreads);
      },
      py::arg("x").noconvert(), py::arg("wtb").noconvert(), py::arg("bb"), py::arg("normalize"),
      py::arg("inv_s").noconvert(), py::arg("x16").noconvert(), py::arg("x16_norm").noconvert(),
      py::arg("dx_norm").noconvert(), py::arg("nthreads"),
      "row_norms_cpu, then x16 = bf16(x) (int16 view, round to nearest even); returns the first non-finite row or -1");

  m.def(
      "f16_to_f32_cpu",
      [](const py::array_t<int16_t, py::array::c_style>& in, F32& out, int nthreads) {
        require(in.size() == out.size(), "out must have as many elements as in");
        float* o = out.mutable_data();
        const uint16_t* i = reinterpret_cast<const uint16_t*>(in.data());
        py::gil_scoped_release nogil;
        hermes::cpu::f16_to_f32(i, in.size(), o, nthreads);
      },
      py::arg("in").noconvert(), py::arg("out").noconvert(), py::arg("nthreads"),
      "out[...] = float(in) for float16 data viewed as int16 (exact)");

  m.def(
      "normalize_rows_cpu",
      [](F32& h, bool normalize, int nthreads) {
        require_2d(h, "h");
        float* p = h.mutable_data();
        py::gil_scoped_release nogil;
        return hermes::cpu::normalize_rows(p, h.shape(0), h.shape(1), h.shape(1), normalize, nthreads);
      },
      py::arg("h").noconvert(), py::arg("normalize"), py::arg("nthreads"),
      "Normalizes h [N, d] in place; returns the first non-finite row or -1");

  m.def(
      "argmin_level_cpu",
      [](const F32& g, int64_t col_offset, int K, int level, int metric, const std::optional<F32>& beta,
         const F32& cterm, const std::vector<F32>& T, const std::optional<F32>& inv_s, I32& codes, int nthreads) {
        require_2d(g, "g");
        require_2d(codes, "codes");
        require(col_offset >= 0 && col_offset + K <= g.shape(1), "g has too few columns for col_offset + K");
        require(codes.shape(0) == g.shape(0), "codes and g must have the same rows");
        require(!inv_s || (inv_s->ndim() == 1 && inv_s->shape(0) == g.shape(0)), "inv_s must be [N]");
        LevelParams p = cpu_params(K, level, static_cast<int>(codes.shape(1)), metric, beta, cterm, T);
        int32_t* c = codes.mutable_data();
        const float* s = opt_ptr(inv_s);
        py::gil_scoped_release nogil;
        hermes::cpu::argmin_level(g.data() + col_offset, g.shape(1), p, s, g.shape(0), c, nthreads);
      },
      py::arg("g").noconvert(), py::arg("col_offset"), py::arg("K"), py::arg("level"), py::arg("metric"),
      py::arg("beta").noconvert().none(true), py::arg("cterm").noconvert(), py::arg("T"),
      py::arg("inv_s").noconvert().none(true), py::arg("codes").noconvert(), py::arg("nthreads"),
      "codes[:, level] = argmax of the level's scores given the GEMM block g[:, col_offset:col_offset+K]");

  m.def(
      "assign_screened_cpu",
      [](const py::array_t<int16_t, py::array::c_style>& g16, const F32& x, const F32& mt, const F32& m16_norm,
         const F32& dm_norm, const std::vector<int64_t>& offsets, const std::vector<int>& Ks, int metric,
         const std::vector<F32>& betas, const std::vector<F32>& cterms, const std::vector<std::vector<F32>>& Ts,
         const F32& inv_s, const F32& x16_norm, const F32& dx_norm, I32& codes, const std::vector<I32>& shadowed,
         int nthreads) {
        require_2d(x, "x");
        require_2d(g16, "g16");
        require_2d(mt, "mt");
        require_2d(codes, "codes");
        const int L = static_cast<int>(Ks.size());
        require(L >= 1 && codes.shape(1) == L, "codes must be [N, L]");
        require(offsets.size() == Ks.size() && betas.size() == Ks.size() && cterms.size() == Ks.size() &&
                    Ts.size() == Ks.size() && shadowed.size() == Ks.size(),
                "one offset, K, beta, cterm, T list and shadowed array per level");
        const int64_t n = x.shape(0), d = x.shape(1), cols = mt.shape(0);
        require(g16.shape(0) == n && g16.shape(1) == cols, "g16 must be [N, sum K]");
        require(mt.shape(1) == d && m16_norm.ndim() == 1 && m16_norm.shape(0) == cols && dm_norm.ndim() == 1 &&
                    dm_norm.shape(0) == cols, "mt must be [sum K, d], m16_norm and dm_norm [sum K]");
        require(inv_s.ndim() == 1 && inv_s.shape(0) == n && codes.shape(0) == n && x16_norm.ndim() == 1 &&
                    x16_norm.shape(0) == n && dx_norm.ndim() == 1 && dx_norm.shape(0) == n,
                "inv_s, x16_norm and dx_norm must be [N]");
        std::vector<hermes::cpu::ScreenLevel> levels;
        for (int l = 0; l < L; ++l) {
          require(offsets[l] >= 0 && offsets[l] + Ks[l] <= cols, "level columns out of range");
          require(betas[l].ndim() == 1 && betas[l].shape(0) == Ks[l], "betas[l] must be [K_l]");
          std::optional<F32> beta(betas[l]);
          require(shadowed[l].ndim() == 1, "shadowed[l] must be 1-d");
          const int32_t* sh = shadowed[l].data();
          for (int64_t i = 0; i < shadowed[l].shape(0); ++i)
            require(sh[i] > 0 && sh[i] < Ks[l], "shadowed[l] holds codeword indices in [1, K_l)");
          levels.push_back({cpu_params(Ks[l], l, L, metric, beta, cterms[l], Ts[l]), offsets[l], sh,
                            static_cast<int>(shadowed[l].shape(0))});
        }
        int32_t* c = codes.mutable_data();
        const uint16_t* g = reinterpret_cast<const uint16_t*>(g16.data());
        py::gil_scoped_release nogil;
        return hermes::cpu::assign_screened(g, g16.shape(1), x.data(), n, d, mt.data(), m16_norm.data(),
                                            dm_norm.data(), levels.data(), L, inv_s.data(), x16_norm.data(),
                                            dx_norm.data(), c, nthreads);
      },
      py::arg("g16").noconvert(), py::arg("x").noconvert(), py::arg("mt").noconvert(),
      py::arg("m16_norm").noconvert(), py::arg("dm_norm").noconvert(), py::arg("offsets"), py::arg("Ks"),
      py::arg("metric"), py::arg("betas"), py::arg("cterms"), py::arg("Ts"), py::arg("inv_s").noconvert(),
      py::arg("x16_norm").noconvert(), py::arg("dx_norm").noconvert(), py::arg("codes").noconvert(),
      py::arg("shadowed"), py::arg("nthreads"),
      "All levels of the folded search screened by a bf16 GEMM g16 [N, sum K] (int16 view of bf16) with exact fp32 "
      "rescoring of the candidates (never the shadowed codewords: exact duplicates of a lower index); returns the "
      "number of rescored codewords");

  m.def(
      "subtract_codeword_cpu",
      [](F32& r, const F32& C, const I32& codes, int level, int nthreads) {
        require_2d(r, "r");
        require_2d(C, "C");
        require_2d(codes, "codes");
        require(C.shape(1) == r.shape(1), "C must be [K, d]");
        require(codes.shape(0) == r.shape(0) && level < codes.shape(1), "codes must be [N, L] with level < L");
        float* rp = r.mutable_data();
        py::gil_scoped_release nogil;
        hermes::cpu::subtract_codeword(rp, r.shape(0), r.shape(1), r.shape(1), C.data(), codes.data(),
                                       static_cast<int>(codes.shape(1)), level, nthreads);
      },
      py::arg("r").noconvert(), py::arg("C").noconvert(), py::arg("codes").noconvert(), py::arg("level"),
      py::arg("nthreads"), "r[n] -= C[codes[n, level]] in place");

  m.def(
      "gemm_argmin_exact_cpu",
      [](const F32& a, const F32& b, int64_t col_offset, int K, int level, int metric, const std::optional<F32>& beta,
         const F32& cterm, const std::vector<F32>& T, const std::optional<F32>& inv_s, I32& codes, int nthreads) {
        require_2d(a, "a");
        require_2d(b, "b");
        require_2d(codes, "codes");
        require(b.shape(0) == a.shape(1), "b must be [d, >=K]");
        require(col_offset >= 0 && col_offset + K <= b.shape(1), "b has too few columns for col_offset + K");
        require(codes.shape(0) == a.shape(0), "codes and a must have the same rows");
        require(!inv_s || (inv_s->ndim() == 1 && inv_s->shape(0) == a.shape(0)), "inv_s must be [N]");
        LevelParams p = cpu_params(K, level, static_cast<int>(codes.shape(1)), metric, beta, cterm, T);
        int32_t* c = codes.mutable_data();
        const float* s = opt_ptr(inv_s);
        py::gil_scoped_release nogil;
        hermes::cpu::gemm_argmin_exact(a.data(), a.shape(0), a.shape(1), a.shape(1), b.data() + col_offset,
                                       b.shape(1), p, s, c, nthreads);
      },
      py::arg("a").noconvert(), py::arg("b").noconvert(), py::arg("col_offset"), py::arg("K"), py::arg("level"),
      py::arg("metric"), py::arg("beta").noconvert().none(true), py::arg("cterm").noconvert(), py::arg("T"),
      py::arg("inv_s").noconvert().none(true), py::arg("codes").noconvert(), py::arg("nthreads"),
      "Kernel-order GEMM + argmin (one fmaf per k, k ascending), for bit-exact checks of the CUDA kernel");

  m.def(
      "affine_exact_cpu",
      [](const F32& x, const F32& wt, const F32& b, F32& h, int nthreads) {
        require_2d(x, "x");
        const int64_t d = x.shape(1);
        require(wt.ndim() == 2 && wt.shape(0) == d && wt.shape(1) == d, "wt must be [d, d]");
        require(b.ndim() == 1 && b.shape(0) == d, "b must be [d]");
        require(h.ndim() == 2 && h.shape(0) == x.shape(0) && h.shape(1) == d, "h must be [N, d]");
        float* hp = h.mutable_data();
        py::gil_scoped_release nogil;
        hermes::cpu::affine_exact(x.data(), x.shape(0), d, d, wt.data(), b.data(), hp, nthreads);
      },
      py::arg("x").noconvert(), py::arg("wt").noconvert(), py::arg("b").noconvert(), py::arg("h").noconvert(),
      py::arg("nthreads"), "Kernel-order h = x W^T + b (no normalization)");

  // CUDA launchers: device pointers (ints) owned by torch, and torch's current stream.
  m.def("cuda_device_count", &hermes::cuda::device_count);
  m.def("cuda_device_error", &hermes::cuda::device_error);
  m.def(
      "row_norms_cuda",
      [](std::uintptr_t x, int dtype, int64_t n, int64_t d, int64_t ldx, std::uintptr_t wtb, float bb, bool normalize,
         std::uintptr_t inv_s, std::uintptr_t stream) {
        py::gil_scoped_release nogil;
        hermes::cuda::row_norms(dptr<void>(x), dtype, n, d, ldx, dptr<float>(wtb), bb, normalize, mptr<float>(inv_s),
                                stream);
      },
      py::arg("x"), py::arg("dtype"), py::arg("n"), py::arg("d"), py::arg("ldx"), py::arg("wtb"), py::arg("bb"),
      py::arg("normalize"), py::arg("inv_s"), py::arg("stream"));
  m.def(
      "normalize_rows_cuda",
      [](std::uintptr_t h, int64_t n, int64_t d, int64_t ldh, bool normalize, std::uintptr_t inv_s,
         std::uintptr_t stream) {
        py::gil_scoped_release nogil;
        hermes::cuda::normalize_rows(mptr<float>(h), n, d, ldh, normalize, mptr<float>(inv_s), stream);
      },
      py::arg("h"), py::arg("n"), py::arg("d"), py::arg("ldh"), py::arg("normalize"), py::arg("inv_s"),
      py::arg("stream"));
  m.def(
      "gemm_argmin_cuda",
      [](std::uintptr_t a, int dtype, int64_t n, int64_t d, int64_t lda, std::uintptr_t b, int64_t ldb, int K,
         int level, int L, int metric, std::uintptr_t beta, std::uintptr_t cterm, const std::vector<std::uintptr_t>& T,
         std::uintptr_t inv_s, std::uintptr_t codes, std::uintptr_t stream) {
        std::vector<const float*> tp;
        for (auto t : T) tp.push_back(dptr<float>(t));
        LevelParams p = make_params(K, level, L, metric, dptr<float>(beta), dptr<float>(cterm), tp);
        py::gil_scoped_release nogil;
        hermes::cuda::gemm_argmin(dptr<void>(a), dtype, n, d, lda, dptr<float>(b), ldb, p, dptr<float>(inv_s),
                                  mptr<int32_t>(codes), stream);
      },
      py::arg("a"), py::arg("dtype"), py::arg("n"), py::arg("d"), py::arg("lda"), py::arg("b"), py::arg("ldb"),
      py::arg("K"), py::arg("level"), py::arg("L"), py::arg("metric"), py::arg("beta"), py::arg("cterm"),
      py::arg("T"), py::arg("inv_s"), py::arg("codes"), py::arg("stream"));
  m.def(
      "affine_cuda",
      [](std::uintptr_t x, int dtype, int64_t n, int64_t d, int64_t ldx, std::uintptr_t wt, std::uintptr_t bias,
         std::uintptr_t h, std::uintptr_t stream) {
        py::gil_scoped_release nogil;
        hermes::cuda::affine(dptr<void>(x), dtype, n, d, ldx, dptr<float>(wt), dptr<float>(bias), mptr<float>(h),
                             stream);
      },
      py::arg("x"), py::arg("dtype"), py::arg("n"), py::arg("d"), py::arg("ldx"), py::arg("wt"), py::arg("bias"),
      py::arg("h"), py::arg("stream"));
  m.def(
      "subtract_codeword_cuda",
      [](std::uintptr_t r, int64_t n, int64_t d, int64_t ldr, std::uintptr_t C, std::uintptr_t codes, int L,
         int level, std::uintptr_t stream) {
        py::gil_scoped_release nogil;
        hermes::cuda::subtract_codeword(mptr<float>(r), n, d, ldr, dptr<float>(C), dptr<int32_t>(codes), L, level,
                                        stream);
      },
      py::arg("r"), py::arg("n"), py::arg("d"), py::arg("ldr"), py::arg("C"), py::arg("codes"), py::arg("L"),
      py::arg("level"), py::arg("stream"));
}
