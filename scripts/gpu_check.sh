#!/usr/bin/env bash
# One-command GPU verification for a lent CUDA machine (see ../shared/GPU.md): build for sm_90, run the
# gpu-marked tests (the tensor-core screen against the CPU executor on the same g16, bit for bit; the fp32 SIMT
# path; the label pipeline), compute-sanitizer memcheck + racecheck on small cases of both paths, and the CUDA
# benchmark (hermes auto/fp32 vs torch naive fp32/TF32/bf16, with the bf16 GEMM roofline).
# Logs go to $OUT (or ./gpu_check_out). Usage: bash scripts/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/gpu_check_out}"
mkdir -p "$OUT"
status=0
step() { echo "== $*" | tee -a "$OUT/summary.txt"; }
run() { local name=$1; shift; step "$name: $*"; if "$@" >"$OUT/$name.log" 2>&1; then echo "   ok" | tee -a "$OUT/summary.txt"; else echo "   FAILED (see $name.log)" | tee -a "$OUT/summary.txt"; status=1; fi; }

nvidia-smi >"$OUT/nvidia-smi.txt" 2>&1 || true
run build env CMAKE_ARGS="-DCMAKE_CUDA_ARCHITECTURES=90" python3 -m pip install --no-build-isolation -v .
run info python3 -c "import hermes, json; print(json.dumps(hermes.build_info(), indent=1)); assert hermes.cuda_available()"
cd tests  # import the installed hermes, not the source tree
run pytest_screen python3 -m pytest -x -q -p no:cacheprovider test_assign.py -k cuda_screen_equals_cpu_screen
run pytest_gpu python3 -m pytest -m gpu -x -q -p no:cacheprovider .
SAN=$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null || true)
if [ -n "$SAN" ]; then
  run memcheck "$SAN" --tool memcheck --error-exitcode 1 python3 -m pytest -m gpu -x -q -p no:cacheprovider test_assign.py -k "both_paths or sizes_on_every_device and (31 or 33) or cuda_screen_equals_cpu_screen and float16 and cos"
  run racecheck "$SAN" --tool racecheck --error-exitcode 1 python3 -m pytest -m gpu -x -q -p no:cacheprovider test_assign.py -k "both_paths and orthogonal and cos"
  run synccheck "$SAN" --tool synccheck --error-exitcode 1 python3 -m pytest -m gpu -x -q -p no:cacheprovider test_assign.py -k "cuda_screen_equals_cpu_screen and bfloat16 and l2"
else
  step "compute-sanitizer not found: memcheck/racecheck skipped"
fi
cd ..
run bench python3 bench/bench_assign.py --device cuda
cat "$OUT/bench.log" 2>/dev/null | tail -20
exit $status
