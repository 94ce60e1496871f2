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
from hermes._backend import _C

pytestmark = pytest.mark.simt

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
SOURCES = [
    HERE / "driver.cpp", HERE / "simt" / "simt.h", HERE / "broken_kernels.h", HERE / "selftest_kernels.h",
    REPO / "csrc" / "cuda" / "assign_kernels.cuh", REPO / "csrc" / "core" / "hermes_core.h",
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


# ----------------------------------------------------------------------------- the pipelines
def folded_case(driver, tmp, n, d, levels, metric, dtype, normalize=True, pad=0, seed=0, env=None):
    """row_norms + one gemm_argmin per level, as hermes/assign.py drives them for an orthogonal W."""
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
    lines = [f"row_norms dtype={dtype} x={tmp}/x.bin n={n} d={d} ldx={ldx} wtb={tmp}/wtb.bin bb={bb!r} "
             f"normalize={int(normalize)} out_inv={tmp}/inv.bin"]
    for l, K in enumerate(levels):
        o = t.offsets[l]
        t.cterm[l].tofile(tmp / f"cterm{l}.bin")
        tpaths = []
        for j, Tj in enumerate(t.T[l]):
            Tj.tofile(tmp / f"T{l}_{j}.bin")
            tpaths.append(f"{tmp}/T{l}_{j}.bin")
        lines.append(f"gemm_argmin dtype={dtype} a={tmp}/x.bin n={n} d={d} lda={ldx} b={tmp}/M.bin b_off={o} "
                     f"ldb={t.M.shape[1]} K={K} level={l} L={L} metric={mcode} beta={tmp}/beta.bin beta_off={o} "
                     f"cterm={tmp}/cterm{l}.bin T={','.join(tpaths) or 'none'} inv={tmp}/inv.bin "
                     f"codes={tmp}/codes{l}.bin out_codes={tmp}/codes{l + 1}.bin")
    run_driver(driver, lines, tmp, env=env)

    inv = np.empty(n, np.float32)
    _C.row_norms_cpu(x32, t.wtb, t.bb, normalize, inv, NT)
    assert_bits_equal(read(tmp / "inv.bin", np.float32, n), inv, "row_norms_kernel inv_s")
    codes = np.zeros((n, L), np.int32)
    for l, K in enumerate(levels):
        o = t.offsets[l]
        _C.gemm_argmin_exact_cpu(x32, t.M, o, K, l, mcode, t.beta[o:o + K], t.cterm[l], t.T[l], inv, codes, NT)
        got = read(tmp / f"codes{l + 1}.bin", np.int32, (n, L))
        np.testing.assert_array_equal(got, codes, err_msg=f"gemm_argmin_kernel codes, folded path, level {l}")
    return codes


def explicit_case(driver, tmp, n, d, levels, metric, dtype, normalize=True, pad=0, seed=0, env=None):
    """affine + normalize_rows + per level gemm_argmin and subtract_codeword, as for a general W."""
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
        lines.append(f"gemm_argmin dtype=f32 a={tmp}/r{l}.bin n={n} d={d} lda={d} b={tmp}/Ct.bin b_off={o} "
                     f"ldb={t.Ct.shape[1]} K={K} level={l} L={L} metric={mcode} beta=none cterm={tmp}/cterm{l}.bin "
                     f"T=none inv=none codes={tmp}/codes{l}.bin out_codes={tmp}/codes{l + 1}.bin")
        if l + 1 < L:
            lines.append(f"subtract_codeword r={tmp}/r{l}.bin n={n} d={d} ldr={d} C={tmp}/C{l}.bin "
                         f"codes={tmp}/codes{l + 1}.bin L={L} level={l} out_r={tmp}/r{l + 1}.bin")
    run_driver(driver, lines, tmp, env=env)

    h = np.empty((n, d), np.float32)
    _C.affine_exact_cpu(x32, t.wt, t.bias, h, NT)
    assert_bits_equal(read(tmp / "h_affine.bin", np.float32, (n, d)), h, "affine_kernel h")
    assert _C.normalize_rows_cpu(h, normalize, NT) == -1
    assert_bits_equal(read(tmp / "r0.bin", np.float32, (n, d)), h, "normalize_rows_kernel h")
    inv = read(tmp / "inv.bin", np.float32, n)
    assert np.isfinite(inv).all() and (not normalize or np.all(inv > 0)) and (normalize or np.all(inv == 1))
    codes = np.zeros((n, L), np.int32)
    for l, K in enumerate(levels):
        o = t.offsets[l]
        _C.gemm_argmin_exact_cpu(h, t.Ct, o, K, l, mcode, None, t.cterm[l], [], None, codes, NT)
        got = read(tmp / f"codes{l + 1}.bin", np.int32, (n, L))
        np.testing.assert_array_equal(got, codes, err_msg=f"gemm_argmin_kernel codes, explicit path, level {l}")
        if l + 1 < L:
            _C.subtract_codeword_cpu(h, t.C[l], codes, l, NT)
            assert_bits_equal(read(tmp / f"r{l + 1}.bin", np.float32, (n, d)), h,
                              f"subtract_codeword_kernel residual after level {l}")
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
        lines.append(f"row_norms dtype={dtype} x={tmp_path}/x{tag}.bin n={n} d={d} ldx={d + 5} "
                     f"wtb={tmp_path}/wtb{tag}.bin bb={bb!r} normalize={int(normalize)} out_inv={tmp_path}/inv{tag}.bin")
        inv = np.empty(n, np.float32)
        _C.row_norms_cpu(x32, wtb, bb, normalize, inv, NT)
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
        bad = _C.normalize_rows_cpu(ref, normalize, NT)
        assert bad == (2 if n >= 4 else -1)
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
        _C.affine_exact_cpu(x32, wt, bias, h, NT)
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
        _C.subtract_codeword_cpu(ref, C, codes, level, NT)
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
    return (f"gemm_argmin dtype={dtype} a={tmp}/a.bin n={n} d={d} lda={d} b={tmp}/b.bin b_off=0 ldb={K} K={K} "
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
    _C.gemm_argmin_exact_cpu(a, b, 0, K, 0, 0, None, ct, [], None, want, NT)
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
