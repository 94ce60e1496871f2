// Build information: what this binary was compiled with.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "cpu/assign_cpu.h"
#include "cuda/assign_cuda.h"

namespace py = pybind11;

#ifndef HERMES_CUDA_ARCHS
#define HERMES_CUDA_ARCHS ""
#endif
#ifndef HERMES_CUDA_VERSION
#define HERMES_CUDA_VERSION ""
#endif
#ifndef HERMES_CXX_COMPILER
#define HERMES_CXX_COMPILER "unknown"
#endif

void bind_info(py::module_& m) {
  m.def("build_info", [] {
    py::dict d;
#if defined(HERMES_WITH_CUDA)
    d["cuda"] = true;
#else
    d["cuda"] = false;
#endif
    d["cuda_architectures"] = std::string(HERMES_CUDA_ARCHS);
    d["cuda_version"] = std::string(HERMES_CUDA_VERSION);
    d["cuda_runtime"] = hermes::cuda::runtime_version();
    d["compiler"] = std::string(HERMES_CXX_COMPILER);
#if defined(_OPENMP)
    d["openmp"] = true;
#else
    d["openmp"] = false;  // not compiled with OpenMP: the row loops borrow torch's team (see cpu_threads)
#endif
    d["cpu_threads"] = hermes::cpu::thread_pool() + ", torch.get_num_threads() threads over rows";
    d["cpu_screen_simd"] = std::string(hermes::cpu::use_avx512() ? "avx512" : "generic");
    d["cpu_half_convert"] = hermes::cpu::half_convert();
    d["pybind11"] = std::to_string(PYBIND11_VERSION_MAJOR) + "." + std::to_string(PYBIND11_VERSION_MINOR) + "." +
                    std::to_string(PYBIND11_VERSION_PATCH);
    return d;
  });
}
