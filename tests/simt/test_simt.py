"""The CUDA kernels' own source, run on the CPU under the SIMT emulator (tests/simt/simt/simt.h), against
the CPU executor, bit for bit.

A session fixture compiles csrc/cuda/assign_kernels.cuh + tests/simt/driver.cpp with g++ under ASan and
UBSan (cached in build/simt/<hash>/). Each test writes the inputs as raw files, runs the driver (one
process, a script of kernel launches chained through files), and compares every output with
hermes._C's CPU executor: inv_s and h as float bits, codes exactly. Grid shapes mirror
csrc/cuda/assign_cuda.cu. Deliberately broken kernels (tests/simt/broken_kernels.h) show that the harness
catches out-of-bounds accesses, barriers that cannot complete, missing barriers and hangs.
"""
from __future__ import annotations

import hashlib
import itertools
import os
import shutil
import subprocess
import zlib
from pathlib import Path

import numpy as np
import pytest

import hermes
from hermes import assign as A
from hermes._backend import _C

pytestmark = pytest.mark.simt

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
SOURCES = [
    HERE / "driver.cpp", HERE / "simt" / "simt.h", HERE / "broken_kernels.h", HERE / "selftest_kernels.h",
    REPO / "csrc" / "cuda" / "assign_kernels.cuh", REPO / "csrc" / "core" / "hermes_core.h",
    REPO / "csrc" / "core" / "screen.h",
]
# -ffp-contract=off as in the CPU build: every fused multiply-add in the kernels is an explicit fmaf.
CXXFLAGS = ["-std=c++17", "-O1", "-g", "-fno-omit-frame-pointer", "-ffp-contract=off",
            "-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-Wall", "-Wextra", "-Werror",
            "-DHERMES_SIMT_EMULATION", f"-I{REPO / 'csrc'}", f"-I{HERE}"]
SAN_ENV = {
    # Leak checking needs ptrace, which some CI sandboxes forbid; the kernels allocate nothing anyway.
    "ASAN_OPTIONS": "detect_leaks=0:halt_on_error=1:abort_on_error=0:detect_stack_use_after_return=0",
    # abort_on_error: the emulator's SIGABRT handler then names the emulated block and thread.
    "UBSAN_OPTIONS": "halt_on_error=1:abort_on_error=1:print_stacktrace=1",
}
ASAN_FIBER_NOTE = "ASan doesn't fully support makecontext/swapcontext"

NS = [0, 1, 31, 33, 257]
DS = [7, 37, 64]          # not a multiple of 4 (nor of the 16-deep k tile), and a multiple
DTYPES = ["f32", "f16", "bf16"]
# K_l below, at, and above the 64-column tile; 1 to 4 levels; unequal sizes per level.
LEVELS = [(5,), (70, 5), (130, 64, 5), (5, 130, 70, 33)]
NT = 2  # CPU executor threads


# ----------------------------------------------------------------------------------- the build
@pytest.fixture(scope="session")
def driver() -> Path:
    """Path of the compiled emulator driver (compiled once per source hash)."""
    cxx = shutil.which(os.environ.get("CXX", "g++"))
    if cxx is None:
        pytest.skip("the SIMT emulator tests compile the CUDA kernels with g++, which is not on PATH "
                    "(set CXX to a g++ with AddressSanitizer)")
    h = hashlib.sha256()
    h.update(subprocess.run([cxx, "--version"], capture_output=True, text=True).stdout.encode())
    h.update(" ".join(CXXFLAGS).encode())
    for src in SOURCES:
        h.update(src.read_bytes())
    out_dir = REPO / "build" / "simt" / h.hexdigest()[:16]
    exe = out_dir / "simt_driver"
    if not exe.exists():
        out_dir.mkdir(parents=True, exist_ok=True)
        tmp = out_dir / f".simt_driver.{os.getpid()}.tmp"
        p = subprocess.run([cxx, *CXXFLAGS, str(HERE / "driver.cpp"), "-o", str(tmp)],
                           capture_output=True, text=True)
        if p.returncode != 0:
            tmp.unlink(missing_ok=True)
            pytest.fail(f"compiling the kernels under the SIMT emulator failed:\n{p.stderr[-6000:]}")
        os.replace(tmp, exe)
        for old in out_dir.parent.iterdir():  # drivers built from older sources
            if old != out_dir and old.is_dir():
                shutil.rmtree(old, ignore_errors=True)
    return exe


def run_driver(driver: Path, lines: list[str], tmp: Path, env: dict | None = None, check: bool = True,
               timeout: float = 300) -> subprocess.CompletedProcess:
    """Runs the driver on a script of commands; fails the test with the driver's stderr when check."""
    script = tmp / "script.txt"
    script.write_text("\n".join(lines) + "\n")
    p = subprocess.run([str(driver), "script", str(script)], capture_output=True, text=True, timeout=timeout,
                       env={**os.environ, **SAN_ENV, **(env or {})})
    p.stderr = "\n".join(l for l in p.stderr.splitlines() if ASAN_FIBER_NOTE not in l)
    if check and p.returncode != 0:
        pytest.fail(f"simt driver exited with {p.returncode}:\n{p.stderr[-6000:]}")
    return p


def fbits(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)


def assert_bits_equal(got: np.ndarray, want: np.ndarray, what: str):
    got, want = fbits(got), fbits(want)
    assert got.shape == want.shape, f"{what}: shape {got.shape} != {want.shape}"
    bad = np.argwhere(got != want)
    assert bad.size == 0, (f"{what}: {len(bad)} of {got.size} values differ in their bits, first at {bad[0].tolist()}: "
                           f"{got.view(np.float32)[tuple(bad[0])]!r} vs {want.view(np.float32)[tuple(bad[0])]!r}")


def read(path: Path, dtype, shape) -> np.ndarray:
    return np.fromfile(path, dtype=dtype).reshape(shape)


# ------------------------------------------------------------------------------------ inputs
def to_storage(x: np.ndarray, dtype: str):
    """(storage bits or float32 array to write, exact float32 values the kernel will see)."""
    if dtype == "f32":
        x32 = x.astype(np.float32)
        return x32, x32
    if dtype == "f16":
        x16 = x.astype(np.float16)
        return x16.view(np.uint16), x16.astype(np.float32)
    import torch

    t = torch.from_numpy(x.astype(np.float32)).to(torch.bfloat16)
    return t.view(torch.int16).numpy().view(np.uint16), t.float().numpy()


def write_strided(path: Path, a: np.ndarray, ld: int):
    """Writes rows of `a` [n, d] with row stride ld; the padding holds NaN (or its bit pattern), and the
    file ends right after the last row's d-th element, so any read of padding or past the end shows."""
    n, d = a.shape
    buf = np.empty((n, ld), dtype=a.dtype)
    buf[...] = np.array(np.nan, dtype=np.float32).astype(a.dtype) if a.dtype != np.uint16 else 0x7fc1
    buf[:, :d] = a
    buf.reshape(-1)[: max(0, (n - 1) * ld + d)].tofile(path)


def make_x(rng, n, d, dtype, special_rows=False):
    x = rng.standard_normal((n, d)) * rng.uniform(0.5, 2.0, size=(n, 1))
    if special_rows and n >= 4:
        x[1] = 0.0                 # inverse norm 0
        x[2, d // 2] = np.nan      # NaN marks the row
        x[3, 0] = np.inf
    return to_storage(x, dtype)


def make_model(rng, d, levels, metric, normalize, orthogonal):
    """A hermes.Model with a zero codeword and a duplicated one per level (ties go to the lowest index)."""
    cbs = []
    for l, K in enumerate(levels):
        c = rng.standard_normal((K, d)) * (0.6 ** l) / np.sqrt(d)
        if K >= 3:
            c[K - 1] = 0.0
            c[K - 2] = c[K // 3]
        cbs.append(c.astype(np.float32))
    if orthogonal:
        W = np.linalg.qr(rng.standard_normal((d, d)))[0].astype(np.float32)
    else:
        W = (np.eye(d) + 0.3 * rng.standard_normal((d, d)) / np.sqrt(d)).astype(np.float32)
    b = (0.05 * rng.standard_normal(d)).astype(np.float32)
    m = hermes.Model(cbs, W=W, b=b, metric=metric, normalize=normalize)
    assert m.fused == orthogonal, "test setup: the folded path needs an orthogonal W"
    return m


def norms_tables(d, wtb, bb, normalize):
    """Tables holding only what norms_split reads (W^T b, ||b||^2, normalize)."""
    return _C.Tables([1], _C.METRIC_L2, normalize, bb, m=np.zeros((d, 1), np.float32), cterm=np.ones(1, np.float32),
                     wtb=wtb)


# ----------------------------------------------------------------------------- the pipelines
def folded_case(driver, tmp, n, d, levels, metric, dtype, normalize=True, pad=0, seed=0, env=None):
    """row_norms + one gemm_argmax per level, as hermes/assign.py drives them for an orthogonal W."""
    rng = np.random.default_rng(seed)
    model = make_model(rng, d, levels, metric, normalize, orthogonal=True)
    t = model._host_tables()
    store, x32 = make_x(rng, n, d, dtype)
    ldx, L, mcode = d + pad, len(levels), {"l2": 0, "cos": 1}[metric]
    write_strided(tmp / "x.bin", store, ldx)
    t.wtb.tofile(tmp / "wtb.bin")
    t.M.tofile(tmp / "M.bin")
    t.beta.tofile(tmp / "beta.bin")
    np.zeros((n, L), np.int32).tofile(tmp / "codes0.bin")
    bb = float(np.float32(t.bb))
    lines = [f"norms_split dtype={dtype} x={tmp}/x.bin n={n} d={d} ldx={ldx} wtb={tmp}/wtb.bin bb={bb!r} "
             f"normalize={int(normalize)} out_inv={tmp}/inv.bin"]
    for l, K in enumerate(levels):
        o = t.offsets[l]
        t.cterm[l].tofile(tmp / f"cterm{l}.bin")
        tpaths = []
        for j, Tj in enumerate(t.T[l]):
            Tj.tofile(tmp / f"T{l}_{j}.bin")
            tpaths.append(f"{tmp}/T{l}_{j}.bin")
        lines.append(f"gemm_argmax dtype={dtype} a={tmp}/x.bin n={n} d={d} lda={ldx} b={tmp}/M.bin b_off={o} "
                     f"ldb={t.M.shape[1]} K={K} level={l} L={L} metric={mcode} beta={tmp}/beta.bin beta_off={o} "
                     f"cterm={tmp}/cterm{l}.bin T={','.join(tpaths) or 'none'} inv={tmp}/inv.bin "
                     f"codes={tmp}/codes{l}.bin out_codes={tmp}/codes{l + 1}.bin")
    run_driver(driver, lines, tmp, env=env)

    tab, _ = A._exec_tables(model, "cpu", False)
    inv = np.empty(n, np.float32)
    _C.norms_split(x32, tab, inv, nthreads=NT)
    assert_bits_equal(read(tmp / "inv.bin", np.float32, n), inv, "norms_split_kernel inv_s")
    codes = np.zeros((n, L), np.int32)
    _C.argmax_levels(None, x32, tab, inv, codes, nthreads=NT)  # the twin: all levels in one call
    for l, K in enumerate(levels):
        got = read(tmp / f"codes{l + 1}.bin", np.int32, (n, L))
        np.testing.assert_array_equal(got[:, :l + 1], codes[:, :l + 1],
                                      err_msg=f"gemm_argmax_kernel codes, folded path, level {l}")
    return codes


def explicit_case(driver, tmp, n, d, levels, metric, dtype, normalize=True, pad=0, seed=0, env=None):
    """affine + normalize_rows + per level gemm_argmax and subtract_codeword, as for a general W."""
    rng = np.random.default_rng(seed)
    model = make_model(rng, d, levels, metric, normalize, orthogonal=False)
    t = model._host_tables()
    store, x32 = make_x(rng, n, d, dtype)
    ldx, L, mcode = d + pad, len(levels), {"l2": 0, "cos": 1}[metric]
    write_strided(tmp / "x.bin", store, ldx)
    t.wt.tofile(tmp / "wt.bin")
    t.bias.tofile(tmp / "bias.bin")
    t.Ct.tofile(tmp / "Ct.bin")
    np.zeros((n, L), np.int32).tofile(tmp / "codes0.bin")
    lines = [f"affine dtype={dtype} x={tmp}/x.bin n={n} d={d} ldx={ldx} wt={tmp}/wt.bin bias={tmp}/bias.bin "
             f"out_h={tmp}/h_affine.bin",
             f"normalize_rows h={tmp}/h_affine.bin n={n} d={d} ldh={d} normalize={int(normalize)} "
             f"out_h={tmp}/r0.bin out_inv={tmp}/inv.bin"]
    for l, K in enumerate(levels):
        o = t.offsets[l]
        t.cterm[l].tofile(tmp / f"cterm{l}.bin")
        t.C[l].tofile(tmp / f"C{l}.bin")
        lines.append(f"gemm_argmax dtype=f32 a={tmp}/r{l}.bin n={n} d={d} lda={d} b={tmp}/Ct.bin b_off={o} "
                     f"ldb={t.Ct.shape[1]} K={K} level={l} L={L} metric={mcode} beta=none cterm={tmp}/cterm{l}.bin "
                     f"T=none inv=none codes={tmp}/codes{l}.bin out_codes={tmp}/codes{l + 1}.bin")
        if l + 1 < L:
            lines.append(f"subtract_codeword r={tmp}/r{l}.bin n={n} d={d} ldr={d} C={tmp}/C{l}.bin "
                         f"codes={tmp}/codes{l + 1}.bin L={L} level={l} out_r={tmp}/r{l + 1}.bin")
    run_driver(driver, lines, tmp, env=env)

    h, inv_cpu = np.empty((n, d), np.float32), np.empty(n, np.float32)
    _C.rotate(x32, t.wt, t.bias, False, h, inv_cpu, nthreads=NT)  # normalize=False: x W^T + b alone
    assert_bits_equal(read(tmp / "h_affine.bin", np.float32, (n, d)), h, "affine_kernel h")
    _C.normalize_rows(h, normalize, inv_cpu, nthreads=NT)
    assert not np.isnan(inv_cpu).any()
    assert_bits_equal(read(tmp / "r0.bin", np.float32, (n, d)), h, "normalize_rows_kernel h")
    inv = read(tmp / "inv.bin", np.float32, n)
    assert_bits_equal(inv, inv_cpu, "normalize_rows_kernel inv_s")
    assert np.isfinite(inv).all() and (not normalize or np.all(inv > 0)) and (normalize or np.all(inv == 1))
    tab, _ = A._exec_tables(model, "cpu", False)
    codes = np.zeros((n, L), np.int32)
    _C.argmax_residual_levels(h, tab, None, codes, nthreads=NT)  # the twin: all levels, residuals updated in place
    for l, K in enumerate(levels):
        got = read(tmp / f"codes{l + 1}.bin", np.int32, (n, L))
        np.testing.assert_array_equal(got[:, :l + 1], codes[:, :l + 1],
                                      err_msg=f"gemm_argmax_kernel codes, explicit path, level {l}")
    if L > 1:
        assert_bits_equal(read(tmp / f"r{L - 1}.bin", np.float32, (n, d)), h,
                          "subtract_codeword_kernel residual before the last level")
    return codes


def _matrix():
    """Every (N, d) pair once, with dtype, metric, levels, normalize and row padding rotating so that each
    value of each axis meets every N and every d; then dtype x metric in full at N=257, d=37."""
    cases = []
    for i, (ni, di) in enumerate(itertools.product(range(len(NS)), range(len(DS)))):
        cases.append(dict(n=NS[ni], d=DS[di], dtype=DTYPES[(ni + di) % 3], metric=("l2", "cos")[i % 2],
                          levels=LEVELS[(ni + 2 * di) % 4], normalize=(i % 4 != 3), pad=3 * (i % 3 == 1)))
    for dtype, metric in itertools.product(DTYPES, ("l2", "cos")):
        cases.append(dict(n=257, d=37, dtype=dtype, metric=metric, levels=(130, 70), normalize=True, pad=2))
    return cases


def _id(c):
    return f"n{c['n']}-d{c['d']}-{c['dtype']}-{c['metric']}-L{len(c['levels'])}" + \
        ("" if c["normalize"] else "-nonorm") + (f"-pad{c['pad']}" if c["pad"] else "")


MATRIX = _matrix()


@pytest.mark.parametrize("case", MATRIX, ids=_id)
def test_folded_path_matches_cpu(driver, tmp_path, case):
    folded_case(driver, tmp_path, **case, seed=zlib.crc32(_id(case).encode()))


@pytest.mark.parametrize("case", MATRIX, ids=_id)
def test_explicit_path_matches_cpu(driver, tmp_path, case):
    explicit_case(driver, tmp_path, **case, seed=zlib.crc32(_id(case).encode()))


@pytest.mark.parametrize("schedule", ["reverse", "random:7"])
def test_results_do_not_depend_on_thread_schedule(driver, tmp_path, schedule):
    """The fibers' order inside a block is a free choice; a race on shared memory would show as a change."""
    env = {"SIMT_SCHEDULE": schedule}
    a = folded_case(driver, tmp_path, 257, 37, (130, 70), "l2", "bf16", pad=1, seed=5, env=env)
    b = explicit_case(driver, tmp_path, 257, 37, (130, 70), "cos", "f16", seed=6, env=env)
    assert a.shape == b.shape == (257, 2)


# ------------------------------------------------------------------------------ single kernels
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("normalize", [True, False], ids=["norm", "nonorm"])
def test_row_norms_kernel(driver, tmp_path, dtype, normalize):
    """Every N and d, strided rows, plus a zero row (inverse norm 0), a NaN row and an Inf row (NaN)."""
    rng = np.random.default_rng(3)
    lines, want = [], {}
    for n, d in itertools.product(NS, DS):
        store, x32 = make_x(rng, n, d, dtype, special_rows=True)
        wtb = (0.1 * rng.standard_normal(d)).astype(np.float32)
        bb = 0.0 if d == 7 else float(np.float32(rng.uniform(0, 0.1)))  # b = 0: a zero row has norm 0
        tag = f"{n}_{d}"
        write_strided(tmp_path / f"x{tag}.bin", store, d + 5)
        wtb.tofile(tmp_path / f"wtb{tag}.bin")
        lines.append(f"norms_split dtype={dtype} x={tmp_path}/x{tag}.bin n={n} d={d} ldx={d + 5} "
                     f"wtb={tmp_path}/wtb{tag}.bin bb={bb!r} normalize={int(normalize)} out_inv={tmp_path}/inv{tag}.bin")
        inv = np.empty(n, np.float32)
        _C.norms_split(x32, norms_tables(d, wtb, bb, normalize), inv, nthreads=NT)
        want[tag] = inv
    run_driver(driver, lines, tmp_path)
    for tag, inv in want.items():
        assert_bits_equal(read(tmp_path / f"inv{tag}.bin", np.float32, inv.shape), inv, f"inv_s for n_d={tag}")
        if inv.size >= 4:
            assert np.isnan(inv[2]) and np.isnan(inv[3])
            if tag.endswith("_7"):
                assert inv[1] == (0.0 if normalize else 1.0)


@pytest.mark.parametrize("normalize", [True, False], ids=["norm", "nonorm"])
def test_normalize_rows_kernel(driver, tmp_path, normalize):
    """Scales rows in place (strided), leaves NaN/Inf rows alone and reports them with inv_s = NaN."""
    rng = np.random.default_rng(4)
    lines, want = [], {}
    for n, d in itertools.product(NS, DS):
        _, h = make_x(rng, n, d, "f32", special_rows=True)
        tag, ldh = f"{n}_{d}", d + 2
        write_strided(tmp_path / f"h{tag}.bin", h, ldh)
        lines.append(f"normalize_rows h={tmp_path}/h{tag}.bin n={n} d={d} ldh={ldh} normalize={int(normalize)} "
                     f"out_h={tmp_path}/out{tag}.bin out_inv={tmp_path}/inv{tag}.bin")
        ref = h.copy()
        inv_ref = np.empty(n, np.float32)
        _C.normalize_rows(ref, normalize, inv_ref, nthreads=NT)
        assert np.flatnonzero(np.isnan(inv_ref)).tolist() == ([2, 3] if n >= 4 else [])
        want[tag] = (ref, n, d, ldh)
    run_driver(driver, lines, tmp_path)
    for tag, (ref, n, d, ldh) in want.items():
        flat = np.fromfile(tmp_path / f"out{tag}.bin", np.float32)
        got = np.pad(flat, (0, n * ldh - flat.size)).reshape(n, ldh)[:, :d] if n else flat.reshape(0, d)
        assert_bits_equal(got, ref, f"normalize_rows h for n_d={tag}")
        pad = np.pad(flat, (0, n * ldh - flat.size)).reshape(n, ldh)[:-1, d:] if n > 1 else np.zeros(0)
        assert np.isnan(pad).all(), "normalize_rows_kernel wrote into the row padding"
        inv = read(tmp_path / f"inv{tag}.bin", np.float32, n)
        if n >= 4:
            assert np.isnan(inv[2]) and np.isnan(inv[3]) and inv[1] == (0.0 if normalize else 1.0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_affine_kernel(driver, tmp_path, dtype):
    """x W^T + b over 64x64 output tiles: d below, inside and at a multiple of the tile, rows padded."""
    rng = np.random.default_rng(5)
    lines, want = [], {}
    for n, d in [(0, 7), (1, 7), (31, 37), (33, 64), (257, 37), (70, 130)]:
        store, x32 = make_x(rng, n, d, dtype)
        wt = rng.standard_normal((d, d)).astype(np.float32)
        bias = rng.standard_normal(d).astype(np.float32)
        tag = f"{n}_{d}"
        write_strided(tmp_path / f"x{tag}.bin", store, d + 1)
        wt.tofile(tmp_path / f"wt{tag}.bin")
        bias.tofile(tmp_path / f"b{tag}.bin")
        lines.append(f"affine dtype={dtype} x={tmp_path}/x{tag}.bin n={n} d={d} ldx={d + 1} wt={tmp_path}/wt{tag}.bin "
                     f"bias={tmp_path}/b{tag}.bin out_h={tmp_path}/h{tag}.bin")
        h = np.empty((n, d), np.float32)
        _C.rotate(x32, wt, bias, False, h, np.empty(n, np.float32), nthreads=NT)
        want[tag] = h
    run_driver(driver, lines, tmp_path)
    for tag, h in want.items():
        assert_bits_equal(read(tmp_path / f"h{tag}.bin", np.float32, h.shape), h, f"affine h for n_d={tag}")


@pytest.mark.parametrize("grid,block", [(None, None), (3, 64), (1, 32)], ids=["launcher", "grid-stride", "one-warp"])
def test_subtract_codeword_kernel(driver, tmp_path, grid, block):
    """r -= C[codes[:, level]] on strided rows; small grids exercise the grid-stride loop."""
    rng = np.random.default_rng(6)
    lines, want = [], {}
    launch = "" if grid is None else f" grid={grid} block={block}"
    for n, d in itertools.product(NS, DS):
        K, L, level = 9, 3, 1
        _, r = make_x(rng, n, d, "f32")
        C = rng.standard_normal((K, d)).astype(np.float32)
        codes = rng.integers(0, K, size=(n, L), dtype=np.int32)
        tag, ldr = f"{n}_{d}", d + 4
        write_strided(tmp_path / f"r{tag}.bin", r, ldr)
        C.tofile(tmp_path / f"C{tag}.bin")
        codes.tofile(tmp_path / f"codes{tag}.bin")
        lines.append(f"subtract_codeword r={tmp_path}/r{tag}.bin n={n} d={d} ldr={ldr} C={tmp_path}/C{tag}.bin "
                     f"codes={tmp_path}/codes{tag}.bin L={L} level={level} out_r={tmp_path}/out{tag}.bin" + launch)
        ref = r.copy()
        _C.subtract_codeword(ref, C, codes, level, nthreads=NT)
        want[tag] = (ref, n, d, ldr)
    run_driver(driver, lines, tmp_path)
    for tag, (ref, n, d, ldr) in want.items():
        flat = np.fromfile(tmp_path / f"out{tag}.bin", np.float32)
        got = np.pad(flat, (0, n * ldr - flat.size)).reshape(n, ldr)[:, :d]
        assert_bits_equal(got, ref, f"subtract_codeword r for n_d={tag}")


# --------------------------------------------------------------------------- the emulator itself
def test_emulator_selftest(driver, tmp_path):
    """Built-in indices, shared memory + __syncthreads, every shuffle flavor, widths, partial warps, atomics."""
    p = run_driver(driver, ["selftest"], tmp_path)
    assert "selftest: ok" in p.stdout


@pytest.mark.parametrize("dtype", ["f16", "bf16"])
def test_16bit_conversions_are_exact(driver, tmp_path, dtype):
    """__half2float / __bfloat162float on all 65536 bit patterns, and float -> 16-bit rounding, against
    numpy / torch (NaN payloads aside: any NaN must stay NaN)."""
    import torch

    bits = np.arange(1 << 16, dtype=np.uint16)
    bits.tofile(tmp_path / "bits.bin")
    vals = np.concatenate([np.random.default_rng(7).standard_normal(200_000) * 10.0 ** np.arange(-9, 11).repeat(10_000),
                           [0.0, -0.0, np.inf, -np.inf, 65504.0, 65519.99, 65520.0, 2.0 ** -24, 2.0 ** -25,
                            1.5 * 2.0 ** -25, 2.0 ** -26, 3.0e38, -1e-45]]).astype(np.float32)
    vals.tofile(tmp_path / "vals.bin")
    run_driver(driver, [f"to_float dtype={dtype} in={tmp_path}/bits.bin out={tmp_path}/f.bin",
                        f"from_float dtype={dtype} in={tmp_path}/vals.bin out={tmp_path}/h.bin"], tmp_path)
    got = np.fromfile(tmp_path / "f.bin", np.float32)
    enc = np.fromfile(tmp_path / "h.bin", np.uint16)
    if dtype == "f16":
        want = bits.view(np.float16).astype(np.float32)
        with np.errstate(over="ignore"):
            want_enc = vals.astype(np.float16).view(np.uint16)
        as_float = enc.view(np.float16).astype(np.float32)
    else:
        want = torch.from_numpy(bits.view(np.int16)).view(torch.bfloat16).float().numpy()
        want_enc = torch.from_numpy(vals).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
        as_float = torch.from_numpy(enc.view(np.int16)).view(torch.bfloat16).float().numpy()
    nan = np.isnan(want)
    assert np.array_equal(np.isnan(got), nan)
    assert_bits_equal(got[~nan], want[~nan], f"{dtype} -> float32")
    ok = ~np.isnan(vals)
    bad = np.flatnonzero(enc[ok] != want_enc[ok])
    assert bad.size == 0, f"float32 -> {dtype}: {bad.size} values round differently, first {vals[ok][bad[0]]!r}"
    assert not np.isnan(as_float).any()


# ----------------------------------------------------------------- the harness catches real bugs
def _gemm_line(tmp, n, d, K, variant, dtype="f32"):
    return (f"gemm_argmax dtype={dtype} a={tmp}/a.bin n={n} d={d} lda={d} b={tmp}/b.bin b_off=0 ldb={K} K={K} "
            f"level=0 L=1 metric=0 beta=none cterm={tmp}/ct.bin T=none inv=none codes={tmp}/codes.bin "
            f"out_codes={tmp}/out_{variant}.bin variant={variant}")


def _gemm_inputs(tmp, n, d, K, seed=8):
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((n, d)).astype(np.float32)
    b = rng.standard_normal((d, K)).astype(np.float32)
    ct = rng.random(K).astype(np.float32)
    a.tofile(tmp / "a.bin")
    b.tofile(tmp / "b.bin")
    ct.tofile(tmp / "ct.bin")
    np.zeros((n, 1), np.int32).tofile(tmp / "codes.bin")
    want = np.zeros((n, 1), np.int32)
    _C.argmax_levels(None, a, _C.Tables([K], _C.METRIC_L2, False, 0.0, m=b, cterm=ct), None, want, nthreads=NT)
    return want


def test_broken_tail_load_is_caught_by_asan(driver, tmp_path):
    """gk <= d in the A tile's tail: the codes still come out right (b's row d loads as 0), so only the
    sanitizer can see the one-element read past the last row. The correct kernel passes the same inputs."""
    n, d, K = 33, 37, 70
    want = _gemm_inputs(tmp_path, n, d, K)
    run_driver(driver, [_gemm_line(tmp_path, n, d, K, "ok")], tmp_path)
    np.testing.assert_array_equal(read(tmp_path / "out_ok.bin", np.int32, (n, 1)), want)
    p = run_driver(driver, [_gemm_line(tmp_path, n, d, K, "tail_oob")], tmp_path, check=False)
    assert p.returncode != 0, "the out-of-bounds tail read went unnoticed"
    assert "heap-buffer-overflow" in p.stderr and "READ of size 4" in p.stderr, p.stderr[-3000:]
    assert "simt: the error above happened in block (0,0,0), thread" in p.stderr, p.stderr[-3000:]


def test_broken_shared_memory_write_is_caught(driver, tmp_path):
    """One store past the end of the B tile in shared memory (a __shared__ array)."""
    n, d, K = 31, 7, 5
    _gemm_inputs(tmp_path, n, d, K)
    p = run_driver(driver, [_gemm_line(tmp_path, n, d, K, "shared_oob")], tmp_path, check=False)
    assert p.returncode != 0, "the shared-memory overflow went unnoticed"
    assert "out of bounds for type 'float [16][64]'" in p.stderr or "global-buffer-overflow" in p.stderr, \
        p.stderr[-3000:]
    assert "simt: the error above happened in block (0,0,0), thread" in p.stderr, p.stderr[-3000:]


def test_broken_barrier_skipped_by_exited_threads_is_caught(driver, tmp_path):
    """Threads with no row return before the mainloop; the rest wait at __syncthreads forever on a GPU.
    The emulator names the block, the barrier and the first thread that left."""
    n, d, K = 1, 7, 5
    _gemm_inputs(tmp_path, n, d, K)
    p = run_driver(driver, [_gemm_line(tmp_path, n, d, K, "early_exit")], tmp_path, check=False, timeout=60,
                   env={"SIMT_TIMEOUT_S": "2"})
    assert p.returncode != 0
    assert "simt: __syncthreads deadlock in block (0,0,0)" in p.stderr, p.stderr[-3000:]
    assert "16 of 256 threads wait at __syncthreads" in p.stderr and "240 exited without reaching it" in p.stderr


def test_broken_missing_barrier_changes_results(driver, tmp_path):
    """Without the second __syncthreads, the next k-stage's loads overwrite tiles other threads still read."""
    n, d, K = 257, 64, 130
    want = _gemm_inputs(tmp_path, n, d, K)
    run_driver(driver, [_gemm_line(tmp_path, n, d, K, "ok"), _gemm_line(tmp_path, n, d, K, "no_second_barrier")],
               tmp_path)
    np.testing.assert_array_equal(read(tmp_path / "out_ok.bin", np.int32, (n, 1)), want)
    broken = read(tmp_path / "out_no_second_barrier.bin", np.int32, (n, 1))
    assert (broken != want).mean() > 0.1, "the race left the codes unchanged"


def test_hang_is_caught_by_the_watchdog(driver, tmp_path):
    """A thread that spins on a flag another thread of its block sets never yields; the watchdog ends
    the run after SIMT_TIMEOUT_S and names the block and thread instead of hanging CI."""
    p = run_driver(driver, ["spin"], tmp_path, check=False, timeout=60, env={"SIMT_TIMEOUT_S": "0.5"})
    assert p.returncode == 124
    assert "simt: timeout in block (0,0,0) of spin_kernel (broken): thread (0,0,0) ran" in p.stderr, p.stderr


@pytest.mark.parametrize("what,message", [
    ("divergent_barrier", "simt: divergent __syncthreads in block (0,0,0) of divergent_barrier: thread (32,0,0)"),
    ("shfl_mask_excludes_self", "with mask 0x0000ffff that excludes its own lane"),
    ("shfl_missing_lane", "mask 0xffffffff names lanes that do not exist in warp 1 (the block has 40 threads)"),
])
def test_misused_barriers_and_shuffles_are_refused(driver, tmp_path, what, message):
    """CUDA leaves these undefined (hangs or garbage on a GPU); the emulator stops with a message."""
    p = run_driver(driver, [f"misuse what={what}"], tmp_path, check=False, timeout=60)
    assert p.returncode != 0 and message in p.stderr, p.stderr[-3000:]


# ------------------------------------------------------------------ the tensor-core screen, CPU = CUDA
def _write_tables(tmp, model, t, tag=""):
    """Writes the screen's tables (as hermes/assign.py builds them) and returns the driver arguments naming them."""
    st = A._screen_tables(model, t)
    paths = {}
    for name, arr in (("beta", t.beta), ("cterm", np.concatenate(t.cterm)), ("mt", st["Mt"]),
                      ("m16n", st["m16_norm"]), ("dmn", st["dm_norm"]), ("shadow", st["shadow"])):
        paths[name] = tmp / f"{name}{tag}.bin"
        np.ascontiguousarray(arr).tofile(paths[name])
    tfiles = []
    for l in range(model.L):
        for j, Tj in enumerate(t.T[l]):
            tfiles.append(tmp / f"T{tag}_{l}_{j}.bin")
            Tj.tofile(tfiles[-1])
    mcode = {"l2": 0, "cos": 1}[model.metric]
    return (f"levels={','.join(map(str, model.levels))} metric={mcode} beta={paths['beta']} cterm={paths['cterm']} "
            f"T={','.join(map(str, tfiles)) or 'none'} mt={paths['mt']} m16n={paths['m16n']} dmn={paths['dmn']} "
            f"shadow={paths['shadow']}")


def screen_case(driver, tmp, n, d, levels, metric, dtype, pad=0, seed=0, poison=True, variant="ok", env=None):
    """norms_split + (torch's bf16 GEMM, poisoned with NaN/Inf in places) + screen_rescore, emulated, against the
    CPU executor fed the same g16: x16 and the norms as bits, the codes and the rescored count exactly."""
    import torch

    rng = np.random.default_rng(seed)
    model = make_model(rng, d, levels, metric, True, orthogonal=True)
    t = model._host_tables()
    store, x32 = make_x(rng, n, d, dtype)
    if n >= 8:  # rows on a codeword's direction, and between two codewords: ties and near-ties to rescore
        M = t.M[:, :levels[0]]
        x32[5] = (M[:, 0] + M[:, 1]) / 2 * 3.0
        x32[6] = M[:, 2] * 2.0
        store, x32 = to_storage(x32, dtype)
    ldx = d + pad
    write_strided(tmp / "x.bin", store, ldx)
    t.wtb.tofile(tmp / "wtb.bin")
    bb = float(np.float32(t.bb))
    split = dtype != "bf16"
    lines = [f"norms_split dtype={dtype} x={tmp}/x.bin n={n} d={d} ldx={ldx} wtb={tmp}/wtb.bin bb={bb!r} normalize=1 "
             f"out_inv={tmp}/inv.bin out_xn={tmp}/xn.bin out_dxn={tmp}/dxn.bin" +
             (f" out_x16={tmp}/x16.bin" if split else "")]
    run_driver(driver, lines, tmp, env=env)

    tab, M16 = A._exec_tables(model, "cpu", True)
    inv, x16 = np.empty(n, np.float32), np.empty((n, d), np.int16)
    xn, dxn = np.empty(n, np.float32), np.empty(n, np.float32)
    _C.norms_split(x32, tab, inv, x16, xn, dxn, nthreads=NT)
    assert_bits_equal(read(tmp / "inv.bin", np.float32, n), inv, "norms_split_kernel inv_s")
    assert_bits_equal(read(tmp / "xn.bin", np.float32, n), xn, "norms_split_kernel ||x16||")
    assert_bits_equal(read(tmp / "dxn.bin", np.float32, n), dxn, "norms_split_kernel ||dx||")
    if split:
        np.testing.assert_array_equal(read(tmp / "x16.bin", np.int16, (n, d)), x16, "norms_split_kernel x16 bits")
    else:  # a bf16 input is its own split
        np.testing.assert_array_equal(x16, store.view(np.int16))
        assert not dxn.any()
    g16 = (torch.from_numpy(x16).view(torch.bfloat16) @ M16).view(torch.int16).numpy().copy()
    if poison and n >= 4:
        nan, inf = np.int16(0x7FC0), np.int16(0x7F80)
        g16[0, 0] = nan                                   # a NaN bound at level 0
        g16[1, :levels[0]] = nan                          # every bound of level 0 NaN: all rescored
        g16[2, t.offsets[-2]] = inf                       # an overflowed score at the last level
        g16[3, rng.integers(0, t.offsets[-1], 3)] = nan   # anywhere
    ldg = t.offsets[-1] + 3
    write_strided(tmp / "g16.bin", g16.view(np.uint16), ldg)
    inv.tofile(tmp / "inv_cpu.bin")
    xn.tofile(tmp / "xn_cpu.bin")
    dxn.tofile(tmp / "dxn_cpu.bin")
    lines = [f"screen_rescore dtype={dtype} x={tmp}/x.bin n={n} d={d} ldx={ldx} g16={tmp}/g16.bin ldg={ldg} "
             f"{_write_tables(tmp, model, t)} inv={tmp}/inv_cpu.bin xn={tmp}/xn_cpu.bin dxn={tmp}/dxn_cpu.bin "
             f"out_codes={tmp}/codes.bin out_count={tmp}/count.bin variant={variant}"]
    run_driver(driver, lines, tmp, env=env)
    codes, rescored = np.zeros((n, len(levels)), np.int32), np.zeros(1, np.int64)
    _C.screen_rescore(g16, x32, tab, inv, xn, dxn, codes, rescored, nthreads=NT)
    got = read(tmp / "codes.bin", np.int32, (n, len(levels)))
    count = int(np.fromfile(tmp / "count.bin", np.int64)[0])
    return got, codes, count, int(rescored[0]), model, x32


SCREEN_CASES = [dict(n=n, d=d, levels=lv, metric=m, dtype=dt, pad=p)
                for i, (n, d, lv, m, dt, p) in enumerate([
                    (0, 7, (5,), "l2", "f32", 0), (1, 37, (70, 5), "cos", "f16", 2), (31, 7, (130, 64, 5), "l2", "bf16", 1),
                    (33, 37, (5, 130, 70, 33), "cos", "f32", 0), (257, 37, (130, 70), "l2", "f16", 3),
                    (257, 7, (33, 70, 130), "cos", "bf16", 0), (257, 37, (70, 33, 5, 130), "l2", "f32", 1),
                    (33, 7, (64,), "cos", "f16", 0)])]


@pytest.mark.parametrize("case", SCREEN_CASES, ids=lambda c: f"n{c['n']}-d{c['d']}-{c['dtype']}-{c['metric']}-L{len(c['levels'])}")
def test_screen_rescore_kernel_equals_cpu_screen(driver, tmp_path, case):
    """The CUDA screen (norms + split, screen + rescore) and the CPU screen on the same g16: the same codes and
    the same number of rescored dot products, bit for bit, NaN/Inf bounds and duplicate codewords included."""
    got, want, count, want_count, model, x32 = screen_case(driver, tmp_path, **case, seed=zlib.crc32(repr(case).encode()))
    np.testing.assert_array_equal(got, want, err_msg="screen_rescore_kernel codes differ from the CPU screen's")
    assert count == want_count, f"rescored {count} dot products, the CPU screen {want_count}"
    if case["n"] >= 33:
        assert count > 0, "the case never rescored: it would not test the rescoring order"
        ref = A.assign_codes(x32, model, precision="fp32")
        # NaN rows 0-3 aside (their bounds are poisoned but rescoring keeps them exact), the screen is exact:
        assert (got != ref).any(axis=1).mean() <= 0.02
    shadow = A._screen_tables(model, model._host_tables())["shadow"]
    for l in range(model.L):  # a duplicate codeword never wins (the lowest-index rule)
        assert not shadow[model._host_tables().offsets[l] + got[:, l]].any()


def test_screen_rescore_schedules(driver, tmp_path):
    """The fibers' order is free: a race on the warp's exchanges would change the codes."""
    for schedule in ("reverse", "random:3"):
        got, want, count, want_count, *_ = screen_case(driver, tmp_path, 257, 37, (130, 70), "cos", "f32", pad=1,
                                                       seed=4, env={"SIMT_SCHEDULE": schedule})
        np.testing.assert_array_equal(got, want)
        assert count == want_count


def test_broken_screen_candidate_rule_is_caught(driver, tmp_path):
    """A screen kernel whose candidate rule is hi >= bar drops codewords with NaN bounds: on the poisoned g16
    its codes differ from the CPU screen's, while the correct kernel on the same inputs agrees. (One level: with
    more, the row whose bounds are all NaN gets code -1 and the next level's cross-table read is out of bounds,
    which ASan reports instead.)"""
    got, want, *_ = screen_case(driver, tmp_path, 33, 37, (70,), "l2", "f32", seed=12)
    np.testing.assert_array_equal(got, want)
    bad, want2, *_ = screen_case(driver, tmp_path, 33, 37, (70,), "l2", "f32", seed=12, variant="nan_dropped")
    np.testing.assert_array_equal(want2, want)
    assert (bad != want).any(), "the broken candidate rule went unnoticed"


def test_argmax_levels_kernel_equals_cpu_epilogue(driver, tmp_path):
    """The fp32 argmax epilogue over a given g (warp per row, levels in order) against the CPU's, bit for bit."""
    lines, want = [], {}
    for i, (n, d, levels, metric) in enumerate([(0, 7, (5,), "l2"), (1, 7, (70, 5), "cos"), (31, 37, (130, 33), "l2"),
                                                (257, 37, (5, 130, 70, 33), "cos")]):
        rng = np.random.default_rng(20 + i)
        model = make_model(rng, d, levels, metric, True, orthogonal=True)
        t = model._host_tables()
        x = rng.standard_normal((n, d)).astype(np.float32)
        tab, _ = A._exec_tables(model, "cpu", False)
        inv = np.empty(n, np.float32)
        _C.norms_split(x, tab, inv, nthreads=NT)
        g = (x @ t.M).astype(np.float32)
        ldg = t.offsets[-1] + 1
        write_strided(tmp_path / f"g{i}.bin", g, ldg)
        inv.tofile(tmp_path / f"inv{i}.bin")
        tag = f"_{i}"
        lines.append(f"argmax_levels g={tmp_path}/g{i}.bin n={n} ldg={ldg} {_write_tables(tmp_path, model, t, tag)} "
                     f"inv={tmp_path}/inv{i}.bin out_codes={tmp_path}/codes{i}.bin")
        codes = np.zeros((n, len(levels)), np.int32)
        _C.argmax_levels(g, x, tab, inv, codes, nthreads=NT)
        want[i] = codes
    run_driver(driver, lines, tmp_path)
    for i, codes in want.items():
        np.testing.assert_array_equal(read(tmp_path / f"codes{i}.bin", np.int32, codes.shape), codes)
