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


def _torch_blas() -> str:
    """The BLAS behind torch's CPU GEMM, which the CPU executor calls, e.g. ``"torch 2.13.0+cpu (mkl)"``."""
    import re

    import torch

    m = re.search(r"BLAS_INFO=(\w+)", torch.__config__.show())
    return f"torch {torch.__version__} ({m.group(1) if m else 'BLAS unknown'})"


def build_info() -> dict:
    """What this hermes binary was built with.

    Keys: ``version``, ``cuda`` (CUDA kernels compiled), ``cuda_architectures`` (list such as
    ``["75-real", ..., "90-virtual"]``), ``cuda_version`` (nvcc version built against), ``cuda_runtime``
    (statically linked runtime version), ``cuda_available`` (usable now), ``cuda_unavailable_reason``,
    ``compiler``, ``openmp`` (the extension was compiled with OpenMP: never; see ``cpu_threads``), ``blas`` (the BLAS behind the CPU GEMM,
    which is torch's), ``cpu_threads`` (how the CPU executor parallelizes: on the OpenMP team of the runtime torch loaded,
    through the GOMP ABI, or on ``std::thread`` when none is loaded or ``HERMES_CPU_THREADS=std``), ``cpu_screen_simd`` (``"avx512"``
    when the bf16 screen's candidate selection and rescoring use AVX-512 on this CPU, else ``"generic"``),
    ``cpu_half_convert`` (how float16 input becomes float32: ``"avx512"``, ``"f16c"`` or ``"scalar"``), ``pybind11``.
    ``HERMES_CPU_ISA=generic`` in the environment forces the portable code everywhere, ``HERMES_CPU_ISA=avx2`` turns
    the AVX-512 paths off only.
    """
    import torch  # noqa: F401  (loads torch's OpenMP runtime first, so cpu_threads reports the team used)

    info = dict(_C.build_info())
    archs = info.get("cuda_architectures", "")
    info["cuda_architectures"] = [a for a in archs.split(",") if a]
    info["version"] = __version__
    info["blas"] = _torch_blas()
    info["cuda_available"] = cuda_available()
    info["cuda_unavailable_reason"] = cuda_unavailable_reason()
    return info
