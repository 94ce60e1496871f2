#!/usr/bin/env python3
"""Wheel smoke test: installs the built wheel into a fresh venv with no build tools and checks it labels the
bundled data exactly as the source tree's float64 reference does.

    python scripts/wheel_smoke.py                      # the one wheel in wheelhouse/ (scripts/build_wheel.sh)
    python scripts/wheel_smoke.py --wheel W.whl --keep # keep the venv and the result files

What it checks, in order:
1. The wheel itself: a manylinux tag, under --max-mb, and its hermes/_C*.so needs no libcudart, libcuda,
   libtorch or libc10 (readelf NEEDED). For a CUDA wheel, cuobjdump (from build/wheel-tools, installed by
   build_wheel.sh) must list SASS for every "-real" architecture and PTX for every "-virtual" one.
2. A fresh venv (plain ``python -m venv``, no system site-packages): torch ``--torch`` (the local CPU wheel, so
   nothing CUDA is downloaded), then the wheel and its runtime dependencies, binary-only. The venv's PATH is its
   own bin/ alone, so cmake, ninja, nvcc and the C++ compiler are out of reach; the child asserts they are, and
   that cmake, ninja, scikit_build_core and pybind11 cannot be imported.
3. In the venv (``python -I``, cwd outside the repo, so the source tree cannot shadow the install): build_info()
   reports the wheel's version, a CUDA build (unless --cpu-only or HERMES_CUDA=OFF), CUDA architectures equal to
   the expected list and to what cuobjdump found, and a reason whenever cuda_available() is False (no driver,
   no device, CPU-only build). Two models built deterministically from the bundled data label all 20,000 rows: a fused one (orthogonal W, bias, cos, levels 256/64/16) and an explicit one
   (general W, l2, levels 100/33/7). A save/load round trip must give the same codes.
4. Back here, the codes are compared with hermes.reference (float64, loaded from the source tree by path, so no
   compiled module is needed here). Codes must match exactly except at near-ties: at the first stage where a
   row differs, the reference's objective for the wheel's codeword must be within --tie-tol of the best one,
   and at most --max-tie-frac of the rows may differ. If the source tree's own compiled hermes imports (a dev
   build), its codes must equal the wheel's exactly.
Exits non-zero on the first failed check; prints one line per check.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "examples" / "data" / "pypi_minilm_20k.f16.npy"
# CMakeLists.txt's default; CUDAARCHS (the CMake environment variable) overrides both.
DEFAULT_ARCHS = "75-real;80-real;86-real;89-real;90-real;90-virtual"
FORBIDDEN_LIBS = ("libcudart", "libcuda.", "libtorch", "libc10")
BUILD_TOOLS = ("cmake", "ninja", "nvcc", "c++", "g++", "gcc")
BUILD_MODULES = ("cmake", "ninja", "scikit_build_core", "pybind11")
MODELS = {
    # name: (levels, metric, W kind, bias)
    "fused_cos": ((256, 64, 16), "cos", "orthogonal", True),
    "explicit_l2": ((100, 33, 7), "l2", "general", False),
}


def log(msg: str) -> None:
    print(f"[wheel_smoke] {msg}", flush=True)


def fail(msg: str) -> None:
    print(f"[wheel_smoke] FAIL: {msg}", file=sys.stderr, flush=True)
    sys.exit(1)


# ------------------------------------------------------------------------------------------ the models
def load_reference():
    """hermes/reference.py from the source tree, loaded by path: it needs numpy only, not hermes._C."""
    spec = importlib.util.spec_from_file_location("hermes_source_reference", REPO / "hermes" / "reference.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def build_params(x: np.ndarray, ref) -> dict:
    """Deterministic model parameters from the data, in the transformed space: stage 0 holds normalized means of
    8 random rows, deeper stages halved differences of two rows. No codeword equals a data row: a row equal to
    its stage-0 codeword would leave a zero residual, where every later codeword ties."""
    d = x.shape[1]
    out = {}
    for seed, (name, (levels, metric, wkind, bias)) in enumerate(MODELS.items()):
        rng = np.random.default_rng(1000 + seed)
        q, _ = np.linalg.qr(rng.standard_normal((d, d)))
        W = q if wkind == "orthogonal" else q + rng.standard_normal((d, d)) * (0.3 / np.sqrt(d))
        b = rng.standard_normal(d) * 0.05 if bias else None
        h = ref.transform(x, W, b, True)
        books = []
        for l, K in enumerate(levels):
            if l == 0:
                c = h[rng.choice(x.shape[0], size=(K, 8))].mean(1)
                books.append(c / np.linalg.norm(c, axis=1, keepdims=True))
            else:
                idx = rng.choice(x.shape[0], size=(2, K), replace=False)
                books.append((h[idx[0]] - h[idx[1]]) * 0.5 ** l)
        out[name] = {
            "metric": metric,
            "W": W.astype(np.float32),
            "b": None if b is None else b.astype(np.float32),
            "codebooks": [c.astype(np.float32) for c in books],
        }
    return out


def save_params(params: dict, path: Path) -> None:
    arrays = {}
    for name, p in params.items():
        arrays[f"{name}/W"] = p["W"]
        if p["b"] is not None:
            arrays[f"{name}/b"] = p["b"]
        for l, c in enumerate(p["codebooks"]):
            arrays[f"{name}/C{l}"] = c
    np.savez(path, **arrays)


def load_params(path: Path) -> dict:
    z = np.load(path)
    out = {}
    for name, (levels, metric, _, _) in MODELS.items():
        out[name] = {
            "metric": metric,
            "W": z[f"{name}/W"],
            "b": z[f"{name}/b"] if f"{name}/b" in z.files else None,
            "codebooks": [z[f"{name}/C{l}"] for l in range(len(levels))],
        }
    return out


def make_model(hermes, p: dict):
    return hermes.Model(p["codebooks"], W=p["W"], b=p["b"], metric=p["metric"], normalize=True)


# ----------------------------------------------------------------------------- child (inside the venv)
def child(work: Path) -> None:
    """Runs under the venv's python -I: everything it learns goes to work/child.json and work/codes_wheel.npz."""
    found_tools = {t: shutil.which(t) for t in BUILD_TOOLS if shutil.which(t)}
    found_modules = [m for m in BUILD_MODULES if importlib.util.find_spec(m) is not None]

    import hermes

    x = np.load(work / "x.npy")
    params = load_params(work / "params.npz")
    codes, fused, roundtrip = {}, {}, {}
    for name, p in params.items():
        model = make_model(hermes, p)
        fused[name] = bool(model.fused)
        t0 = time.perf_counter()
        codes[name] = hermes.assign_codes(x, model)
        dt = time.perf_counter() - t0
        path = work / f"{name}.model"
        model.save(path)
        again = hermes.assign_codes(x, hermes.load(path))
        roundtrip[name] = bool(np.array_equal(again, codes[name]))
        print(f"  venv: {name}: {x.shape[0]} rows in {dt:.2f}s", flush=True)
    np.savez(work / "codes_wheel.npz", **codes)
    info = hermes.build_info()
    report = {
        "hermes_file": hermes.__file__,
        "version": hermes.__version__,
        "build_info": {k: v for k, v in info.items()},
        "cuda_available": bool(hermes.cuda_available()),
        "fused": fused,
        "roundtrip": roundtrip,
        "found_tools": found_tools,
        "found_modules": found_modules,
        "sys_path": sys.path,
    }
    (work / "child.json").write_text(json.dumps(report, indent=1, default=str))


# ---------------------------------------------------------------------------------- checks on the wheel
def find_wheel(arg: str | None) -> Path:
    if arg:
        w = Path(arg)
        if not w.is_file():
            fail(f"--wheel {w} does not exist")
        return w
    wheels = sorted((REPO / "wheelhouse").glob("hermes*.whl"))
    if len(wheels) != 1:
        fail(f"expected exactly one hermes*.whl in wheelhouse/ (run scripts/build_wheel.sh), found {len(wheels)}")
    return wheels[0]


def expected_archs(arg: str | None) -> list:
    spec = arg or os.environ.get("CUDAARCHS") or DEFAULT_ARCHS
    return [a for a in re.split(r"[;,]", spec) if a]


def find_cuobjdump(arg: str | None) -> str | None:
    if arg:
        return arg
    hits = sorted((REPO / "build" / "wheel-tools").glob("lib/python*/site-packages/nvidia/cu*/bin/cuobjdump"))
    return str(hits[0]) if hits else shutil.which("cuobjdump")


def inspect_wheel(wheel: Path, tmp: Path, max_mb: float, cuobjdump: str | None, archs: list) -> dict:
    size = wheel.stat().st_size
    if "manylinux" not in wheel.name:
        fail(f"{wheel.name} has no manylinux tag (was it repaired by auditwheel?)")
    if size > max_mb * 2**20:
        fail(f"{wheel.name} is {size / 2**20:.1f} MB, over the {max_mb} MB limit")
    log(f"wheel {wheel.name}: {size / 2**20:.2f} MB (limit {max_mb} MB), tag ok")
    with zipfile.ZipFile(wheel) as z:
        sos = [n for n in z.namelist() if re.fullmatch(r"hermes/_C\..*\.so", n)]
        if len(sos) != 1:
            fail(f"expected one hermes/_C*.so in the wheel, found {sos}")
        so = Path(z.extract(sos[0], tmp / "unzipped"))
    needed = re.findall(r"\(NEEDED\)\s+Shared library: \[(.+?)\]",
                        subprocess.run(["readelf", "-d", str(so)], capture_output=True, text=True, check=True).stdout)
    bad = [n for n in needed if n.startswith(FORBIDDEN_LIBS)]
    if bad:
        fail(f"{so.name} links {bad}: the CUDA runtime must be static and libtorch must not be linked")
    log(f"_C NEEDED: {', '.join(needed)} (no libcudart/libcuda/libtorch/libc10)")
    found = {"elf": [], "ptx": []}
    if not cuobjdump:
        log("cuobjdump not found (build/wheel-tools or PATH): fatbin contents not listed")
        return {"cuobjdump": None, **found}
    for kind in ("elf", "ptx"):
        r = subprocess.run([cuobjdump, f"--list-{kind}", str(so)], capture_output=True, text=True)
        found[kind] = sorted(set(re.findall(rf"\.sm_(\d+a?)\.{'cubin' if kind == 'elf' else 'ptx'}", r.stdout)),
                             key=lambda s: int(s.rstrip("a")))
    log(f"cuobjdump: SASS sm_{', sm_'.join(found['elf']) or '-'}; PTX compute_{', compute_'.join(found['ptx']) or '-'}")
    return {"cuobjdump": cuobjdump, **found}


def check_archs(info: dict, archs: list, fat: dict, expect_cuda: bool) -> None:
    got = info["cuda_architectures"]
    if info["cuda"] != expect_cuda:
        fail(f"build_info()['cuda'] is {info['cuda']}, expected {expect_cuda}"
             + (" (pass --cpu-only or set HERMES_CUDA=OFF for a CPU-only wheel)" if expect_cuda else ""))
    if not info["cuda"]:
        log("CPU-only wheel, as expected: build_info() reports cuda=False, no architectures")
        if got:
            fail(f"a CPU-only build lists CUDA architectures {got}")
        return
    if got != archs:
        fail(f"build_info()['cuda_architectures'] = {got}, expected {archs}")
    if fat["cuobjdump"]:
        want_elf = sorted({a.split("-")[0] for a in archs if not a.endswith("-virtual")}, key=int)
        want_ptx = sorted({a.split("-")[0] for a in archs if not a.endswith("-real")}, key=int)
        if fat["elf"] != want_elf or fat["ptx"] != want_ptx:
            fail(f"fatbin holds SASS {fat['elf']} and PTX {fat['ptx']}, expected SASS {want_elf} and PTX {want_ptx}")
    log(f"build_info: CUDA {info['cuda_version']} (runtime {info['cuda_runtime']}), archs {', '.join(got)}"
        + (" = the fatbin" if fat["cuobjdump"] else ""))


# ------------------------------------------------------------------------------------ the fresh venv
def make_venv(venv: Path, wheel: Path, torch_spec: str) -> tuple:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = venv / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV", "CONDA"))}
    env["PATH"] = str(venv / "bin")  # no /usr/bin, no /usr/local/cuda: no cmake, ninja, nvcc or compiler
    env.pop("CUDACXX", None)
    env.pop("CUDA_HOME", None)
    pip = [str(py), "-m", "pip", "install", "-q", "--only-binary=:all:", "--no-warn-script-location"]
    # torch first, pinned, so pip takes the local CPU wheel instead of downloading a CUDA one.
    for req in (torch_spec, str(wheel)):
        r = subprocess.run([*pip, req], env=env, capture_output=True, text=True)
        if r.returncode:
            fail(f"pip install {req} in the fresh venv failed:\n{r.stdout}{r.stderr}")
    log(f"fresh venv {venv}: {torch_spec} + {wheel.name} and its dependencies in {time.perf_counter() - t0:.0f}s")
    return py, env


# ---------------------------------------------------------------------------------------- comparison
def compare(name: str, p: dict, x: np.ndarray, ref, got: np.ndarray, want: np.ndarray, tie_tol: float,
            max_frac: float) -> None:
    if got.shape != want.shape or got.dtype != np.int32:
        fail(f"{name}: wheel codes are {got.dtype} {got.shape}, expected int32 {want.shape}")
    diff = np.nonzero((got != want).any(1))[0]
    worst = 0.0
    for n in diff:
        l = int(np.nonzero(got[n] != want[n])[0][0])
        # Stages before l agree, so both sides quantize the same residual at stage l.
        r = ref.residuals(x[n:n + 1], p["codebooks"], want[n:n + 1], p["W"], p["b"], True)[l]
        obj = ref.stage_objective(r, p["codebooks"][l], p["metric"])[0]
        if p["metric"] == "cos":
            obj = obj * np.linalg.norm(r)  # r.c/||c||: the kernels' scale, not shrunk at deep stages
        gap = float(obj[want[n, l]] - obj[got[n, l]])
        worst = max(worst, gap)
        if gap > tie_tol:
            fail(f"{name}: row {n} stage {l}: wheel picked {got[n, l]}, reference {want[n, l]}, objective gap "
                 f"{gap:.3g} > tie tolerance {tie_tol:g} (not a near-tie)")
    frac = len(diff) / max(1, len(got))
    if frac > max_frac:
        fail(f"{name}: {len(diff)} rows ({frac:.3%}) differ from the reference, more than {max_frac:.3%}")
    log(f"{name}: {len(got)} rows x {got.shape[1]} stages: {len(got) - len(diff)} identical to the float64 "
        f"reference, {len(diff)} near-ties (largest objective gap {worst:.2g}, tolerance {tie_tol:g})")


def source_tree_codes(x: np.ndarray, params: dict):
    """Codes from the source tree's own compiled hermes (a dev build), or None when it has none."""
    sys.path.insert(0, str(REPO))
    try:
        import hermes
    except ImportError as e:
        log(f"source-tree hermes does not import here ({e}); comparing with the reference only")
        return None
    finally:
        sys.path.pop(0)
    if Path(hermes.__file__).resolve().parent != REPO / "hermes":
        log(f"hermes here is {hermes.__file__}, not the source tree; comparing with the reference only")
        return None
    log(f"source-tree hermes imports here, with {hermes._backend._C.__file__}")
    return {name: hermes.assign_codes(x, make_model(hermes, p)) for name, p in params.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--wheel", help="the wheel to test (default: the one hermes*.whl in wheelhouse/)")
    ap.add_argument("--venv", help="where to create the venv (default: a temporary folder)")
    ap.add_argument("--keep", action="store_true", help="keep the venv and the result files")
    ap.add_argument("--torch", default="torch==2.13.0", help="torch requirement for the venv (default %(default)s)")
    ap.add_argument("--cpu-only", action="store_true",
                    help="expect a CPU-only wheel (also implied by HERMES_CUDA=OFF, as for build_wheel.sh)")
    ap.add_argument("--archs", help=f"expected CUDA architectures (default $CUDAARCHS or {DEFAULT_ARCHS})")
    ap.add_argument("--cuobjdump", help="cuobjdump binary (default: build/wheel-tools, then PATH)")
    ap.add_argument("--max-mb", type=float, default=50.0, help="wheel size limit in MB (default %(default)s)")
    ap.add_argument("--tie-tol", type=float, default=1e-4,
                    help="largest objective gap accepted as a near-tie (default %(default)g)")
    ap.add_argument("--max-tie-frac", type=float, default=1e-3,
                    help="largest fraction of rows that may differ at near-ties (default %(default)g)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(Path(args.child))

    t_start = time.perf_counter()
    wheel = find_wheel(args.wheel).resolve()
    archs = expected_archs(args.archs)
    tmp = Path(tempfile.mkdtemp(prefix="hermes-wheel-smoke-"))
    try:
        fat = inspect_wheel(wheel, tmp, args.max_mb, find_cuobjdump(args.cuobjdump), archs)

        ref = load_reference()
        x = np.load(DATA).astype(np.float32)
        params = build_params(x, ref)
        np.save(tmp / "x.npy", x)
        save_params(params, tmp / "params.npz")
        params = load_params(tmp / "params.npz")  # exactly what the venv sees (float32)
        t0 = time.perf_counter()
        want = {name: ref.assign(x, p["codebooks"], p["W"], p["b"], p["metric"], True) for name, p in params.items()}
        log(f"float64 reference codes (source tree) in {time.perf_counter() - t0:.1f}s")

        venv = Path(args.venv).resolve() if args.venv else tmp / "venv"
        py, env = make_venv(venv, wheel, args.torch)
        subprocess.run([str(py), "-I", str(Path(__file__).resolve()), "--child", str(tmp)], check=True, env=env,
                       cwd=tmp)
        rep = json.loads((tmp / "child.json").read_text())

        if not Path(rep["hermes_file"]).resolve().is_relative_to(venv):
            fail(f"the venv imported hermes from {rep['hermes_file']}, not from its own site-packages")
        if rep["found_tools"] or rep["found_modules"]:
            fail(f"the venv is not free of build tools: PATH has {rep['found_tools']}, importable {rep['found_modules']}")
        log(f"venv imports hermes {rep['version']} from site-packages; no {', '.join(BUILD_TOOLS)} on PATH, "
            f"no {', '.join(BUILD_MODULES)} importable")
        info = rep["build_info"]
        wheel_version = wheel.name.split("-")[1]
        if info["version"] != wheel_version or rep["version"] != wheel_version:
            fail(f"build_info version {info['version']} / __version__ {rep['version']} != wheel version {wheel_version}")
        expect_cuda = not args.cpu_only and os.environ.get("HERMES_CUDA", "ON").upper() != "OFF"
        check_archs(info, archs, fat, expect_cuda)
        if not rep["cuda_available"] and not info["cuda_unavailable_reason"]:
            fail("cuda_available() is False but build_info gives no cuda_unavailable_reason")
        log(f"CUDA usable in the venv: {rep['cuda_available']}"
            + ("" if rep["cuda_available"] else f" ({info['cuda_unavailable_reason']})"))

        got = dict(np.load(tmp / "codes_wheel.npz"))
        expect_fused = {"fused_cos": True, "explicit_l2": False}
        if rep["fused"] != expect_fused:
            fail(f"model paths were {rep['fused']}, expected {expect_fused} (both the fused and explicit paths)")
        if not all(rep["roundtrip"].values()):
            fail(f"save/load changed the codes: {rep['roundtrip']}")
        for name, p in params.items():
            compare(name, p, x, ref, got[name], want[name], args.tie_tol, args.max_tie_frac)
        src = source_tree_codes(x, params)
        if src is not None:
            for name in params:
                if not np.array_equal(src[name], got[name]):
                    n = int(np.nonzero((src[name] != got[name]).any(1))[0][0])
                    fail(f"{name}: wheel and source-tree build differ, first at row {n}: {got[name][n]} vs {src[name][n]}")
            log("codes identical to the source tree's hermes")
        log(f"OK in {time.perf_counter() - t_start:.0f}s")
    finally:
        if args.keep:
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
