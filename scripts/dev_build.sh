#!/usr/bin/env bash
# Contributor build: compiles hermes._C into build/dev and links it into hermes/, so the source tree
# imports directly (cd to the repo root or set PYTHONPATH). Extra args go to CMake, e.g. -DHERMES_CUDA=OFF.
set -euo pipefail
cd "$(dirname "$0")/.."
cmake -S . -B build/dev -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_CUDA_ARCHITECTURES="${CUDA_ARCHS:-75}" \
  -Dpybind11_DIR="$(python3 -c 'import pybind11; print(pybind11.get_cmake_dir())')" \
  -DPython_EXECUTABLE="$(command -v python3)" "$@" >/dev/null
cmake --build build/dev
so=$(ls build/dev/_C*.so)
ln -sf "../$so" hermes/
echo "linked $so into hermes/"
