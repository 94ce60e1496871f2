"""The only module that imports the compiled extension hermes._C; everything else goes through here."""
from __future__ import annotations

from . import _C  # noqa: F401  (re-exported for the wrappers)
from ._version import __version__


def cuda_compiled() -> bool:
    """True when this build of hermes contains the CUDA kernels."""
    return bool(_C.build_info()["cuda"])


def cuda_unavailable_reason() -> str:
    """Why the CUDA path cannot run here ("" when it can)."""
    if not cuda_compiled():
        return "hermes was built without CUDA (HERMES_CUDA=OFF or nvcc was not found at build time)"
    return _C.cuda_device_error()


def cuda_available() -> bool:
    """True when hermes was built with CUDA and a CUDA device is usable (driver present, device visible)."""
    return cuda_compiled() and _C.cuda_device_count() > 0


def build_info() -> dict:
    """What this hermes binary was built with.

    Keys: ``version``, ``cuda`` (CUDA kernels compiled), ``cuda_architectures`` (list such as
    ``["75-real", ..., "90-virtual"]``), ``cuda_version`` (nvcc version built against), ``cuda_runtime``
    (statically linked runtime version), ``cuda_available`` (usable now), ``cuda_unavailable_reason``,
    ``compiler``, ``cpu_threads`` (how the CPU executor parallelizes and where its GEMM comes from), ``pybind11``.
    """
    info = dict(_C.build_info())
    archs = info.get("cuda_architectures", "")
    info["cuda_architectures"] = [a for a in archs.split(",") if a]
    info["version"] = __version__
    info["cuda_available"] = cuda_available()
    info["cuda_unavailable_reason"] = cuda_unavailable_reason()
    return info
