// Bindings for the executors: one Python function per operation of csrc/core/ops.inc, dispatched to
// hermes::cpu or hermes::cuda by the device of its tensors. Tensors (torch, or numpy on the CPU) cross as checked
// views: shape, dtype, device and row density are checked here, and pointers are computed here, never in Python.
#include <pybind11/functional.h>
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstring>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "core/screen.h"
#include "cpu/assign_cpu.h"
#include "cuda/assign_cuda.h"

namespace py = pybind11;
using hermes::core::LevelParams;

namespace {

[[noreturn]] void fail(const std::string& fn, const std::string& msg) {
  throw std::invalid_argument("hermes._C." + fn + ": " + msg);
}

// A checked view of a torch tensor or a numpy array: data pointer, up to 2 dims, element strides, dtype name
// ("float32", "float16", "bfloat16", "int16", "int32", "int64", "uint8") and device (-1 = CPU).
struct View {
  void* data = nullptr;
  int ndim = 0;
  int64_t shape[2] = {0, 0};
  int64_t stride[2] = {0, 0};
  std::string dtype;
  int device = -1;
  bool writeable = true;
  bool present = false;

  std::string where() const { return device < 0 ? "cpu" : "cuda:" + std::to_string(device); }
  std::string describe() const {
    std::string s = "[";
    for (int i = 0; i < ndim; ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
    return s + "] " + dtype + " on " + where();
  }
};

View view(const py::handle& o, const std::string& fn, const char* name, bool optional = false) {
  View v;
  if (o.is_none()) {
    if (!optional) fail(fn, std::string(name) + " is required, got None");
    return v;
  }
  v.present = true;
  if (py::hasattr(o, "data_ptr") && py::hasattr(o, "device")) {  // torch.Tensor
    std::string dt = py::str(o.attr("dtype"));
    v.dtype = dt.rfind("torch.", 0) == 0 ? dt.substr(6) : dt;
    py::object dev = o.attr("device");
    const std::string type = py::str(dev.attr("type"));
    if (type == "cuda") {
      v.device = dev.attr("index").is_none() ? 0 : dev.attr("index").cast<int>();
    } else if (type != "cpu") {
      fail(fn, std::string(name) + " is on unsupported device " + type);
    }
    py::tuple shape = o.attr("shape");
    py::tuple stride = o.attr("stride")();
    v.ndim = static_cast<int>(shape.size());
    if (v.ndim > 2) fail(fn, std::string(name) + " must be 1-d or 2-d, got " + std::to_string(v.ndim) + "-d");
    for (int i = 0; i < v.ndim; ++i) {
      v.shape[i] = shape[i].cast<int64_t>();
      v.stride[i] = stride[i].cast<int64_t>();
    }
    v.data = reinterpret_cast<void*>(o.attr("data_ptr")().cast<std::uintptr_t>());
    return v;
  }
  if (py::isinstance<py::array>(o)) {
    py::array a = py::reinterpret_borrow<py::array>(o);
    v.dtype = py::str(a.dtype());
    v.ndim = static_cast<int>(a.ndim());
    if (v.ndim > 2) fail(fn, std::string(name) + " must be 1-d or 2-d, got " + std::to_string(v.ndim) + "-d");
    for (int i = 0; i < v.ndim; ++i) {
      v.shape[i] = a.shape(i);
      if (a.strides(i) % static_cast<py::ssize_t>(a.itemsize()) != 0) fail(fn, std::string(name) + " is misaligned");
      v.stride[i] = a.strides(i) / a.itemsize();
    }
    v.writeable = a.writeable();
    v.data = const_cast<void*>(a.data());
    return v;
  }
  fail(fn, std::string(name) + " must be a torch.Tensor or a numpy array, got " +
               std::string(py::str(py::type::handle_of(o).attr("__name__"))));
}

// Checks a view: dims (-1 = any), dtype (one of a '|'-separated list), rows dense (last stride 1; 2-d rows may
// have a larger stride only when `strided`), device and writeability.
void expect(const View& v, const std::string& fn, const char* name, std::vector<int64_t> dims, const std::string& dtypes,
            int device, bool out = false, bool strided = false) {
  if (!v.present) return;
  const std::string want = "[" + [&] {
    std::string s;
    for (size_t i = 0; i < dims.size(); ++i) s += (i ? ", " : "") + (dims[i] < 0 ? std::string("*") : std::to_string(dims[i]));
    return s;
  }() + "] " + dtypes + " on " + (device < 0 ? std::string("cpu") : "cuda:" + std::to_string(device));
  bool ok = v.ndim == static_cast<int>(dims.size()) && v.device == device &&
            ("|" + dtypes + "|").find("|" + v.dtype + "|") != std::string::npos;
  for (int i = 0; ok && i < v.ndim; ++i) ok = dims[i] < 0 || dims[i] == v.shape[i];
  if (!ok) fail(fn, std::string(name) + " must be " + want + ", got " + v.describe());
  const bool empty = v.ndim >= 1 && (v.shape[0] == 0 || v.shape[v.ndim - 1] == 0);
  if (!empty && v.ndim >= 1 && v.shape[v.ndim - 1] > 1 && v.stride[v.ndim - 1] != 1)
    fail(fn, std::string(name) + " must have dense rows (last stride 1), got strides (" + std::to_string(v.stride[0]) +
                 (v.ndim == 2 ? ", " + std::to_string(v.stride[1]) : std::string()) + ")");
  if (!empty && v.ndim == 2 && v.shape[0] > 1 && (strided ? v.stride[0] < v.shape[1] : v.stride[0] != v.shape[1]))
    fail(fn, std::string(name) + " must be C-contiguous, got row stride " + std::to_string(v.stride[0]));
  if (out && !v.writeable) fail(fn, std::string(name) + " is read-only");
}

template <class T>
T* ptr(const View& v) { return static_cast<T*>(v.data); }

int dtype_code(const View& v) {
  if (v.dtype == "float32") return hermes::core::kF32;
  if (v.dtype == "float16") return hermes::core::kF16;
  return hermes::core::kBF16;
}

// The model tables of one device, checked once at construction and kept alive with the tensors they point into.
struct PyTables {
  hermes::core::Tables t;
  int device = -1;
  std::vector<py::object> keep;
};

std::shared_ptr<PyTables> make_tables(const std::vector<int>& levels, int metric, bool normalize, float bb,
                                      py::object m, py::object cterm, py::object beta, py::object T, py::object mt,
                                      py::object m16_norm, py::object dm_norm, py::object shadow, py::object wtb,
                                      py::object c) {
  const std::string fn = "Tables";
  auto pt = std::make_shared<PyTables>();
  hermes::core::Tables& t = pt->t;
  const int L = static_cast<int>(levels.size());
  if (L < 1 || L > hermes::core::kMaxLevels) fail(fn, "levels must hold 1 to 8 sizes");
  if (metric != hermes::core::kL2 && metric != hermes::core::kCos) fail(fn, "metric must be 0 (l2) or 1 (cos)");
  t.L = L;
  t.offset[0] = 0;
  for (int l = 0; l < L; ++l) {
    if (levels[l] < 1) fail(fn, "every level needs at least one codeword");
    t.offset[l + 1] = t.offset[l] + levels[l];
  }
  t.cols = t.offset[L];
  View vm = view(m, fn, "m");
  pt->device = vm.device;
  const int dev = vm.device;
  expect(vm, fn, "m", {-1, t.cols}, "float32", dev);
  t.d = vm.shape[0];
  t.m = ptr<const float>(vm);
  View vc = view(cterm, fn, "cterm");
  expect(vc, fn, "cterm", {t.cols}, "float32", dev);
  View vb = view(beta, fn, "beta", true);
  expect(vb, fn, "beta", {t.cols}, "float32", dev);
  View vmt = view(mt, fn, "mt", true), vmn = view(m16_norm, fn, "m16_norm", true), vdn = view(dm_norm, fn, "dm_norm", true);
  expect(vmt, fn, "mt", {t.cols, t.d}, "float32", dev);
  expect(vmn, fn, "m16_norm", {t.cols}, "float32", dev);
  expect(vdn, fn, "dm_norm", {t.cols}, "float32", dev);
  View vs = view(shadow, fn, "shadow", true);
  expect(vs, fn, "shadow", {t.cols}, "uint8|bool", dev);
  View vw = view(wtb, fn, "wtb", true);
  expect(vw, fn, "wtb", {t.d}, "float32", dev);
  View vcb = view(c, fn, "c", true);
  expect(vcb, fn, "c", {t.cols, t.d}, "float32", dev);
  t.mt = vmt.present ? ptr<const float>(vmt) : nullptr;
  t.m16_norm = vmn.present ? ptr<const float>(vmn) : nullptr;
  t.dm_norm = vdn.present ? ptr<const float>(vdn) : nullptr;
  t.shadow = vs.present ? ptr<const uint8_t>(vs) : nullptr;
  t.wtb = vw.present ? ptr<const float>(vw) : nullptr;
  t.c = vcb.present ? ptr<const float>(vcb) : nullptr;
  t.bb = bb;
  t.normalize = normalize;
  std::vector<std::vector<py::object>> Ts;
  if (!T.is_none()) Ts = T.cast<std::vector<std::vector<py::object>>>();
  if (!Ts.empty() && static_cast<int>(Ts.size()) != L) fail(fn, "T must hold one list per level");
  for (int l = 0; l < L; ++l) {
    LevelParams& p = t.p[l];
    p.K = levels[l];
    p.level = l;
    p.L = L;
    p.metric = metric;
    p.cterm = ptr<const float>(vc) + t.offset[l];
    p.beta = vb.present ? ptr<const float>(vb) + t.offset[l] : nullptr;
    for (int j = 0; j < hermes::core::kMaxLevels; ++j) p.T[j] = nullptr;
    if (!Ts.empty()) {
      if (!Ts[l].empty() && static_cast<int>(Ts[l].size()) != l) fail(fn, "T[l] must hold l tables (or none)");
      for (size_t j = 0; j < Ts[l].size(); ++j) {
        View vt = view(Ts[l][j], fn, "T[l][j]");
        expect(vt, fn, "T[l][j]", {levels[j], levels[l]}, "float32", dev);
        p.T[j] = ptr<const float>(vt);
        pt->keep.push_back(Ts[l][j]);
      }
    }
  }
  for (py::object o : {m, cterm, beta, mt, m16_norm, dm_norm, shadow, wtb, c}) pt->keep.push_back(o);
  if (!vb.present && !Ts.empty())
    for (int l = 1; l < L; ++l)
      if (t.p[l].T[0] != nullptr) fail(fn, "the folded search (T given) needs beta");
  return pt;
}

hermes::core::Rows rows_of(const View& x) {
  hermes::core::Rows r;
  r.data = x.data;
  r.dtype = dtype_code(x);
  r.n = x.shape[0];
  r.d = x.shape[1];
  r.ld = x.shape[0] > 1 ? x.stride[0] : x.shape[1];
  return r;
}

hermes::core::Exec exec_of(int nthreads, std::uintptr_t stream) {
  hermes::core::Exec e;
  e.nthreads = nthreads < 1 ? 1 : nthreads;
  e.stream = stream;
  return e;
}

// Runs the operation on the executor of `device`: the same name and signature on both (csrc/core/ops.inc).
#define HERMES_ON(device, op, ...)                 \
  do {                                             \
    if ((device) >= 0)                             \
      hermes::cuda::op(__VA_ARGS__);               \
    else                                           \
      hermes::cpu::op(__VA_ARGS__);                \
  } while (0)

const char* kInputs = "float32|float16|bfloat16";

}  // namespace

void bind_assign(py::module_& m) {
  m.attr("METRIC_L2") = static_cast<int>(hermes::core::kL2);
  m.attr("METRIC_COS") = static_cast<int>(hermes::core::kCos);
  m.attr("MAX_LEVELS") = hermes::core::kMaxLevels;

  py::class_<PyTables, std::shared_ptr<PyTables>>(m, "Tables",
      "A model's tables on one device (tensors checked once and kept alive), for the operations below")
      .def(py::init(&make_tables), py::arg("levels"), py::arg("metric"), py::arg("normalize"), py::arg("bb"),
           py::arg("m"), py::arg("cterm"), py::arg("beta") = py::none(), py::arg("T") = py::none(),
           py::arg("mt") = py::none(), py::arg("m16_norm") = py::none(), py::arg("dm_norm") = py::none(),
           py::arg("shadow") = py::none(), py::arg("wtb") = py::none(), py::arg("c") = py::none(),
           "levels [L]; m [d, cols] fp32 GEMM operand; cterm [cols]; beta [cols]; T[l][j] [K_j, K_l] for j < l; "
           "mt [cols, d], m16_norm and dm_norm [cols], shadow [cols] uint8 (the screen); wtb [d]; c [cols, d]")
      .def_property_readonly("device", [](const PyTables& t) { return t.device; })
      .def_property_readonly("d", [](const PyTables& t) { return t.t.d; })
      .def_property_readonly("cols", [](const PyTables& t) { return t.t.cols; });

  m.def(
      "norms_split",
      [](py::object x, const PyTables& t, py::object inv_s, py::object x16, py::object x16_norm, py::object dx_norm,
         int nthreads, std::uintptr_t stream) {
        const std::string fn = "norms_split";
        View vx = view(x, fn, "x"), vi = view(inv_s, fn, "inv_s"), v16 = view(x16, fn, "x16", true);
        View vn = view(x16_norm, fn, "x16_norm", true), vd = view(dx_norm, fn, "dx_norm", true);
        const int dev = t.device;
        expect(vx, fn, "x", {-1, t.t.d}, kInputs, dev, false, true);
        const int64_t n = vx.shape[0];
        expect(vi, fn, "inv_s", {n}, "float32", dev, true);
        expect(v16, fn, "x16", {n, t.t.d}, "bfloat16|int16|uint16", dev, true);
        expect(vn, fn, "x16_norm", {n}, "float32", dev, true);
        expect(vd, fn, "dx_norm", {n}, "float32", dev, true);
        const hermes::core::Rows r = rows_of(vx);
        const hermes::core::Exec e = exec_of(nthreads, stream);
        py::gil_scoped_release nogil;
        HERMES_ON(dev, norms_split, r, t.t, ptr<float>(vi), v16.present ? ptr<uint16_t>(v16) : nullptr,
                  vn.present ? ptr<float>(vn) : nullptr, vd.present ? ptr<float>(vd) : nullptr, e);
      },
      py::arg("x"), py::arg("tables"), py::arg("inv_s"), py::arg("x16") = py::none(), py::arg("x16_norm") = py::none(),
      py::arg("dx_norm") = py::none(), py::arg("nthreads") = 1, py::arg("stream") = 0,
      "inv_s [N] = 1/||W x + b|| (NaN marks a row with NaN/Inf); with x16 [N, d] also the bf16 split and, when "
      "given, ||x16|| and ||x - x16|| [N]");

  m.def(
      "screen_rescore",
      [](py::object g16, py::object x, const PyTables& t, py::object inv_s, py::object x16_norm, py::object dx_norm,
         py::object codes, py::object rescored, int nthreads, std::uintptr_t stream) {
        const std::string fn = "screen_rescore";
        View vg = view(g16, fn, "g16"), vx = view(x, fn, "x"), vi = view(inv_s, fn, "inv_s");
        View vn = view(x16_norm, fn, "x16_norm"), vd = view(dx_norm, fn, "dx_norm"), vc = view(codes, fn, "codes");
        View vr = view(rescored, fn, "rescored");
        const int dev = t.device;
        if (t.t.mt == nullptr || t.t.m16_norm == nullptr || t.t.dm_norm == nullptr || t.t.shadow == nullptr ||
            t.t.wtb == nullptr)
          fail(fn, "tables lack the screen's operands (mt, m16_norm, dm_norm, shadow, wtb)");
        for (int l = 0; l < t.t.L; ++l)
          if (t.t.p[l].beta == nullptr) fail(fn, "tables lack beta (the screen runs the folded search)");
        expect(vx, fn, "x", {-1, t.t.d}, kInputs, dev, false, true);
        const int64_t n = vx.shape[0];
        expect(vg, fn, "g16", {n, t.t.cols}, "bfloat16|int16|uint16", dev, false, true);
        expect(vi, fn, "inv_s", {n}, "float32", dev);
        expect(vn, fn, "x16_norm", {n}, "float32", dev);
        expect(vd, fn, "dx_norm", {n}, "float32", dev);
        expect(vc, fn, "codes", {n, t.t.L}, "int32", dev, true);
        expect(vr, fn, "rescored", {1}, "int64", dev, true);
        const hermes::core::Rows r = rows_of(vx);
        const hermes::core::Exec e = exec_of(nthreads, stream);
        const int64_t ldg = n > 1 ? vg.stride[0] : t.t.cols;
        py::gil_scoped_release nogil;
        HERMES_ON(dev, screen_rescore, ptr<const uint16_t>(vg), ldg, r, t.t, ptr<const float>(vi),
                  ptr<const float>(vn), ptr<const float>(vd), ptr<int32_t>(vc), ptr<int64_t>(vr), e);
      },
      py::arg("g16"), py::arg("x"), py::arg("tables"), py::arg("inv_s"), py::arg("x16_norm"), py::arg("dx_norm"),
      py::arg("codes"), py::arg("rescored"), py::arg("nthreads") = 1, py::arg("stream") = 0,
      "codes [N, L] of all levels from the screening GEMM g16 [N, cols] (bf16) with exact fp32 rescoring of the "
      "candidates; rescored [1] int64 += the number of rescored dot products");

  m.def(
      "argmax_levels",
      [](py::object g, py::object x, const PyTables& t, py::object inv_s, py::object codes, int nthreads,
         std::uintptr_t stream) {
        const std::string fn = "argmax_levels";
        View vg = view(g, fn, "g", true), vx = view(x, fn, "x"), vi = view(inv_s, fn, "inv_s", true);
        View vc = view(codes, fn, "codes");
        const int dev = t.device;
        expect(vx, fn, "x", {-1, t.t.d}, kInputs, dev, false, true);
        const int64_t n = vx.shape[0];
        expect(vg, fn, "g", {n, t.t.cols}, "float32", dev, false, true);
        expect(vi, fn, "inv_s", {n}, "float32", dev);
        expect(vc, fn, "codes", {n, t.t.L}, "int32", dev, true);
        const hermes::core::Rows r = rows_of(vx);
        const hermes::core::Exec e = exec_of(nthreads, stream);
        const int64_t ldg = vg.present && n > 1 ? vg.stride[0] : t.t.cols;
        py::gil_scoped_release nogil;
        HERMES_ON(dev, argmax_levels, vg.present ? ptr<const float>(vg) : nullptr, ldg, r, t.t,
                  vi.present ? ptr<const float>(vi) : nullptr, ptr<int32_t>(vc), e);
      },
      py::arg("g"), py::arg("x"), py::arg("tables"), py::arg("inv_s"), py::arg("codes"), py::arg("nthreads") = 1,
      py::arg("stream") = 0,
      "codes [N, L]: per level the argmax of the scores given g = x . M [N, cols] (the vendor GEMM), or with g None "
      "computed by the executor (CUDA: the fp32 SIMT tiles; CPU: their k-order twin)");

  m.def(
      "argmax_residual_levels",
      [](py::object r, const PyTables& t, py::object gemm, py::object codes, int nthreads, std::uintptr_t stream) {
        const std::string fn = "argmax_residual_levels";
        View vr = view(r, fn, "r"), vc = view(codes, fn, "codes");
        const int dev = t.device;
        if (t.t.c == nullptr) fail(fn, "tables lack the codewords c");
        expect(vr, fn, "r", {-1, t.t.d}, "float32", dev, true);
        const int64_t n = vr.shape[0];
        expect(vc, fn, "codes", {n, t.t.L}, "int32", dev, true);
        const hermes::core::Exec e = exec_of(nthreads, stream);
        std::vector<py::object> held;  // the callback's outputs, alive until the epilogue has read them
        hermes::cpu::LevelGemm cb;
        if (!gemm.is_none()) {
          cb = [&](int level) -> const float* {
            py::gil_scoped_acquire gil;
            py::object g = gemm(level);
            View vg = view(g, fn, "gemm(level)");
            expect(vg, fn, "gemm(level)", {n, t.t.p[level].K}, "float32", dev);
            held.push_back(g);
            return ptr<const float>(vg);
          };
        }
        {
          py::gil_scoped_release nogil;
          HERMES_ON(dev, argmax_residual_levels, ptr<float>(vr), n, t.t, cb, ptr<int32_t>(vc), e);
        }
      },
      py::arg("r"), py::arg("tables"), py::arg("gemm"), py::arg("codes"), py::arg("nthreads") = 1,
      py::arg("stream") = 0,
      "The explicit path's levels on r [N, d] (in place): per level g = gemm(level) [N, K_l] = r . C_l^T (or, with "
      "gemm None, computed by the executor), the argmax into codes [N, L], then r -= C_l[code]");

  m.def(
      "rotate",
      [](py::object x, py::object wt, py::object bias, bool normalize, py::object h, py::object inv_s, int nthreads,
         std::uintptr_t stream) {
        const std::string fn = "rotate";
        View vx = view(x, fn, "x"), vw = view(wt, fn, "wt"), vb = view(bias, fn, "bias"), vh = view(h, fn, "h");
        View vi = view(inv_s, fn, "inv_s");
        const int dev = vx.device;
        expect(vx, fn, "x", {-1, -1}, kInputs, dev, false, true);
        const int64_t n = vx.shape[0], d = vx.shape[1];
        expect(vw, fn, "wt", {d, d}, "float32", dev);
        expect(vb, fn, "bias", {d}, "float32", dev);
        expect(vh, fn, "h", {n, d}, "float32", dev, true);
        expect(vi, fn, "inv_s", {n}, "float32", dev, true);
        const hermes::core::Rows r = rows_of(vx);
        const hermes::core::Exec e = exec_of(nthreads, stream);
        py::gil_scoped_release nogil;
        HERMES_ON(dev, rotate, r, ptr<const float>(vw), ptr<const float>(vb), normalize, ptr<float>(vh),
                  ptr<float>(vi), e);
      },
      py::arg("x"), py::arg("wt"), py::arg("bias"), py::arg("normalize"), py::arg("h"), py::arg("inv_s"),
      py::arg("nthreads") = 1, py::arg("stream") = 0,
      "h [N, d] = normalize(x W^T + b) with wt = W^T [d, d]; inv_s [N] (NaN marks a bad row)");

  m.def(
      "normalize_rows",
      [](py::object h, bool normalize, py::object inv_s, int nthreads, std::uintptr_t stream) {
        const std::string fn = "normalize_rows";
        View vh = view(h, fn, "h"), vi = view(inv_s, fn, "inv_s");
        const int dev = vh.device;
        expect(vh, fn, "h", {-1, -1}, "float32", dev, true);
        expect(vi, fn, "inv_s", {vh.shape[0]}, "float32", dev, true);
        const hermes::core::Exec e = exec_of(nthreads, stream);
        py::gil_scoped_release nogil;
        HERMES_ON(dev, normalize_rows, ptr<float>(vh), vh.shape[0], vh.shape[1], normalize, ptr<float>(vi), e);
      },
      py::arg("h"), py::arg("normalize"), py::arg("inv_s"), py::arg("nthreads") = 1, py::arg("stream") = 0,
      "Scales the rows of h [N, d] to unit norm in place; inv_s [N] (NaN marks a bad row)");

  m.def(
      "subtract_codeword",
      [](py::object r, py::object C, py::object codes, int level, int nthreads, std::uintptr_t stream) {
        const std::string fn = "subtract_codeword";
        View vr = view(r, fn, "r"), vC = view(C, fn, "C"), vc = view(codes, fn, "codes");
        const int dev = vr.device;
        expect(vr, fn, "r", {-1, -1}, "float32", dev, true);
        expect(vC, fn, "C", {-1, vr.shape[1]}, "float32", dev);
        expect(vc, fn, "codes", {vr.shape[0], -1}, "int32", dev);
        if (level < 0 || level >= vc.shape[1]) fail(fn, "level must be in [0, L)");
        const hermes::core::Exec e = exec_of(nthreads, stream);
        py::gil_scoped_release nogil;
        HERMES_ON(dev, subtract_codeword, ptr<float>(vr), vr.shape[0], vr.shape[1], ptr<const float>(vC),
                  ptr<const int32_t>(vc), static_cast<int>(vc.shape[1]), level, e);
      },
      py::arg("r"), py::arg("C"), py::arg("codes"), py::arg("level"), py::arg("nthreads") = 1, py::arg("stream") = 0,
      "r [N, d] -= C[codes[:, level]] in place");

  m.def(
      "f16_to_f32_cpu",
      [](const py::array_t<int16_t, py::array::c_style>& in, py::array_t<float, py::array::c_style>& out, int nthreads) {
        if (in.size() != out.size()) fail("f16_to_f32_cpu", "out must have as many elements as in");
        float* o = out.mutable_data();
        const uint16_t* i = reinterpret_cast<const uint16_t*>(in.data());
        py::gil_scoped_release nogil;
        hermes::cpu::f16_to_f32(i, in.size(), o, nthreads);
      },
      py::arg("in").noconvert(), py::arg("out").noconvert(), py::arg("nthreads"),
      "out[...] = float(in) for float16 data viewed as int16 (exact)");

  m.def(
      "unit_rows_cpu",
      [](const py::array& x, py::array_t<float, py::array::c_style>& u, py::array_t<double, py::array::c_style>& norms,
         int nthreads) -> int64_t {
        const std::string fn = "unit_rows_cpu";
        const bool half = x.dtype().is(py::dtype("float16"));
        if (!half && !x.dtype().is(py::dtype::of<float>())) fail(fn, "x must be float16 or float32");
        if (x.ndim() != 2 || !(x.flags() & py::array::c_style)) fail(fn, "x must be a C-contiguous [n, d] array");
        const int64_t n = x.shape(0), d = x.shape(1);
        if (u.ndim() != 2 || u.shape(0) != n || u.shape(1) != d) fail(fn, "u must be float32 [n, d] like x");
        if (norms.ndim() != 1 || norms.shape(0) != n) fail(fn, "norms must be float64 [n]");
        const void* xp = x.data();
        float* up = u.mutable_data();
        double* np_ = norms.mutable_data();
        py::gil_scoped_release nogil;
        return hermes::cpu::unit_rows(xp, half, n, d, up, np_, nthreads);
      },
      py::arg("x"), py::arg("u").noconvert(), py::arg("norms").noconvert(), py::arg("nthreads"),
      "u = x / ||x|| per row (x float16/float32 [n, d]; zero rows and rows with NaN/Inf give 0), norms float64 "
      "[n]; returns the first row with NaN or Inf, or -1");

  m.def(
      "run_sums_cpu",
      [](const py::array_t<float, py::array::c_style>& rows, const py::array_t<int64_t, py::array::c_style>& starts,
         const py::array_t<int64_t, py::array::c_style>& ends, py::array_t<double, py::array::c_style>& out,
         int nthreads) {
        const std::string fn = "run_sums_cpu";
        if (rows.ndim() != 2) fail(fn, "rows must be float32 [n, d]");
        const int64_t n = rows.shape(0), d = rows.shape(1), k = starts.size();
        if (ends.size() != k) fail(fn, "ends must have as many entries as starts");
        if (out.ndim() != 2 || out.shape(0) != k || out.shape(1) != d) fail(fn, "out must be float64 [len(starts), d]");
        const int64_t *s = starts.data(), *e = ends.data();
        for (int64_t j = 0; j < k; ++j)
          if (s[j] < 0 || s[j] > e[j] || e[j] > n) fail(fn, "runs must satisfy 0 <= starts[j] <= ends[j] <= n");
        const float* rp = rows.data();
        double* op = out.mutable_data();
        py::gil_scoped_release nogil;
        hermes::cpu::run_sums(rp, d, s, e, k, op, nthreads);
      },
      py::arg("rows").noconvert(), py::arg("starts").noconvert(), py::arg("ends").noconvert(), py::arg("out").noconvert(),
      py::arg("nthreads"), "out[j] = sum of rows[starts[j]:ends[j]], in float64");

  m.def(
      "pread_rows_cpu",
      [](int fd, const py::array_t<int64_t, py::array::c_style>& offsets, int64_t row_bytes, py::array& out,
         int nthreads) -> int64_t {
        const std::string fn = "pread_rows_cpu";
        const int64_t n = offsets.size();
        if (row_bytes < 0 || !(out.flags() & py::array::c_style) || !out.writeable() ||
            out.nbytes() < n * row_bytes)
          fail(fn, "out must be a writeable C-contiguous array of at least len(offsets) * row_bytes bytes");
        const int64_t* off = offsets.data();
        char* dst = static_cast<char*>(out.mutable_data());
        int err = 0;
        int64_t short_row;
        {
          py::gil_scoped_release nogil;
          short_row = hermes::cpu::pread_rows(fd, off, n, row_bytes, dst, &err, nthreads);
        }
        if (err) throw std::runtime_error(std::string("pread: ") + std::strerror(err));
        return short_row;
      },
      py::arg("fd"), py::arg("offsets").noconvert(), py::arg("row_bytes"), py::arg("out"), py::arg("nthreads") = 1,
      "Reads row i (row_bytes bytes at byte offset offsets[i] of file descriptor fd) into out, threaded, without "
      "the GIL; returns the first row the file ended in, or -1");

  m.def("cuda_device_count", &hermes::cuda::device_count);
  m.def("cuda_device_error", &hermes::cuda::device_error);
}
