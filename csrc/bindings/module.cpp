// The one extension module, hermes._C: each area binds itself in its own file.
#include <pybind11/pybind11.h>

namespace py = pybind11;

void bind_assign(py::module_& m);
void bind_info(py::module_& m);

PYBIND11_MODULE(_C, m) {
  m.doc() = "hermes compiled kernels (CPU executors and, when built, CUDA launchers)";
  bind_assign(m);
  bind_info(m);
}
