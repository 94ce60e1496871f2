#!/usr/bin/env bash
# The README's first command and CI's install path: CPU torch 2.13.0, then the release wheel built once
# (scripts/build_wheel.sh: CPU executors + CUDA kernels, repaired by auditwheel), installed with the test extras.
# For plain use without the release wheel, `pip install .` builds and installs hermes from source instead.
#
#   bash scripts/install.sh && hermes demo
#
# Environment: PYTHON (default python3), TORCH_SPEC (default torch==2.13.0; "" keeps the installed torch), and
# build_wheel.sh's (HERMES_CUDA=AUTO where there is no nvcc, CUDAARCHS, WHEELHOUSE, ...).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC-torch==2.13.0}
export PIP_DISABLE_PIP_VERSION_CHECK=1
if [[ -n "$TORCH_SPEC" ]]; then "$PY" -m pip install "$TORCH_SPEC"; fi
PYTHON="$PY" bash scripts/build_wheel.sh
wheel=$(ls "${WHEELHOUSE:-wheelhouse}"/hermes*.whl)
"$PY" -m pip install --force-reinstall --no-deps "$wheel"
"$PY" -m pip install "$wheel[test]"
echo "[install] installed $(basename "$wheel") with the test extras; try: hermes demo"
