"""assign_codes / transform / decode against the float64 reference, on every device, plus bad input and save/load."""
import json

import numpy as np
import pytest

import hermes
from hermes import reference as R

from conftest import to_device, to_numpy

# Codes may differ from the float64 reference only at a near-tie: at the first level where they differ,
# the reference objective of hermes's pick is within TIE_TOL of the best. Units: for cos, the gap in
# r.c/||c|| relative to ||h|| (so a near-zero residual, e.g. a document equal to a codeword, may pick
# any deeper codeword); for l2, the gap in ||r - c||^2 relative to 1 + the largest objective.
TIE_TOL = 1e-4


def make_model(d, Ks, metric="cos", wkind="orthogonal", normalize=True, seed=0):
    rng = np.random.default_rng(seed)
    cbs = [(rng.standard_normal((K, d)) * (0.6 ** l) / np.sqrt(d)).astype(np.float32) for l, K in enumerate(Ks)]
    W = b = None
    if wkind == "orthogonal":
        W = np.linalg.qr(rng.standard_normal((d, d)))[0].astype(np.float32)
        b = (0.05 * rng.standard_normal(d)).astype(np.float32)
    elif wkind == "general":
        W = (np.eye(d) + 0.3 * rng.standard_normal((d, d)) / np.sqrt(d)).astype(np.float32)
        b = (0.05 * rng.standard_normal(d)).astype(np.float32)
    return hermes.Model(cbs, W=W, b=b, metric=metric, normalize=normalize)


def unit_rows(n, d, seed=1):
    x = np.random.default_rng(seed).standard_normal((n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def check_codes(x, model, codes, max_tie_frac=0.01):
    """Asserts codes equal the reference's except at documented near-ties; returns the number of tie rows.

    With d = 1 every cosine is exactly +-1, so most rows are exact ties: pass max_tie_frac=None there.
    """
    codes = to_numpy(codes)
    assert codes.dtype == np.int32 and codes.shape == (x.shape[0], model.L)
    ref = R.assign(x, model.codebooks, model.W, model.b, model.metric, model.normalize)
    rows = np.flatnonzero((codes != ref).any(axis=1))
    if rows.size == 0:
        return 0
    res = R.residuals(x[rows], model.codebooks, ref[rows], model.W, model.b, model.normalize)
    for i, row in enumerate(rows):
        l = int(np.flatnonzero(codes[row] != ref[row])[0])
        obj = R.stage_objective(res[l][i:i + 1], model.codebooks[l], model.metric)[0]
        gap = obj[ref[row, l]] - obj[codes[row, l]]
        if model.metric == "cos":
            # hermes scores r.c/||c||, whose rounding error scales with ||h||, not ||r||: compare in those units.
            gap *= np.linalg.norm(res[l][i]) / max(np.linalg.norm(res[0][i]), 1e-30)
        else:
            gap /= 1.0 + np.abs(obj).max()
        assert 0 <= gap <= TIE_TOL, f"row {row} level {l}: hermes picked {codes[row, l]}, reference {ref[row, l]}, gap {gap}"
    if max_tie_frac is not None:
        assert rows.size <= max(2, max_tie_frac * x.shape[0]), f"{rows.size} near-tie rows out of {x.shape[0]}"
    return rows.size


def test_reference_hand_computed():
    # d=2, two levels. x = (3, 4) -> h = (0.6, 0.8).
    C1 = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
    C2 = np.array([[0.1, 0.0], [-0.1, 0.0], [0.0, -0.5]])
    x = np.array([[3.0, 4.0]])
    assert np.allclose(R.transform(x), [[0.6, 0.8]])
    # l2: distances to C1 = 0.4^2+0.8^2=0.8, 0.6^2+0.2^2=0.4, 1.0 -> pick 1; r = (0.6, -0.2)
    # then to C2: (0.5^2+0.2^2)=0.29, (0.7^2+0.2^2)=0.53, (0.6^2+0.3^2)=0.45 -> pick 0.
    assert R.assign(x, [C1, C2], metric="l2").tolist() == [[1, 0]]
    # cos: cos to C1 = 0.6, 0.8, 0 (zero codeword) -> 1; r=(0.6,-0.2): cos to C2 = +, -, + (0.2/(0.632*0.5)=0.316)
    # (0.6/0.632=0.949 for codeword 0) -> 0.
    assert R.assign(x, [C1, C2], metric="cos").tolist() == [[1, 0]]
    # Exact ties go to the lowest index: h=(0.6,0.8) is equidistant from two identical codewords.
    assert R.assign(x, [np.array([[0.0, 1.0], [0.0, 1.0]])], metric="l2").tolist() == [[0]]
    assert np.allclose(R.decode([[1, 2]], [C1, C2]), [[0.0, 0.5]])


@pytest.mark.parametrize("d", [1, 7, 64, 384, 1000])
@pytest.mark.parametrize("L", [1, 2, 3, 4])
@pytest.mark.parametrize("metric", ["cos", "l2"])
@pytest.mark.parametrize("wkind", ["identity", "orthogonal", "general"])
def test_matches_reference(d, L, metric, wkind):
    model = make_model(d, (256, 64, 32, 16)[:L], metric, wkind)
    assert model.fused == (wkind != "general")
    x = unit_rows(257, d) * 3.0
    check_codes(x, model, hermes.assign_codes(x, model), max_tie_frac=None if d == 1 else 0.01)


@pytest.mark.parametrize("n", [0, 1, 31, 33, 257, 10000])
def test_sizes_on_every_device(n, device):
    model = make_model(64, (256, 64, 32), "cos", "orthogonal")
    x = unit_rows(n, 64)
    codes = hermes.assign_codes(to_device(x, device), model)
    assert type(codes).__module__.split(".")[0] == ("numpy" if device == "numpy" else "torch")
    if device == "cuda":
        assert codes.device.type == "cuda"
    check_codes(x, model, codes)


@pytest.mark.parametrize("wkind", ["orthogonal", "general"])
@pytest.mark.parametrize("metric", ["cos", "l2"])
def test_both_paths_on_every_device(device, wkind, metric):
    model = make_model(37, (70, 5, 130), metric, wkind)
    x = unit_rows(300, 37)
    check_codes(x, model, hermes.assign_codes(to_device(x, device), model, batch_size=64))


def test_unnormalized_and_batches():
    model = make_model(48, (256, 32), "l2", "orthogonal", normalize=False)
    x = unit_rows(1000, 48) * 0.7
    a = hermes.assign_codes(x, model, batch_size=1)
    b = hermes.assign_codes(x, model, batch_size=333)
    assert np.array_equal(a, b)
    check_codes(x, model, b)


def test_float16_bfloat16_and_noncontiguous(device):
    import torch

    model = make_model(64, (256, 64, 32), "cos", "orthogonal")
    x16 = unit_rows(513, 64).astype(np.float16)
    codes = hermes.assign_codes(to_device(x16, device), model)
    check_codes(x16.astype(np.float32), model, codes)
    # Non-contiguous: every other row of a wider array, and a transposed view.
    wide = unit_rows(600, 64)
    view = wide[::2]
    check_codes(np.ascontiguousarray(view), model, hermes.assign_codes(to_device(wide, device)[::2], model))
    tview = np.asfortranarray(view)
    assert not tview.flags.c_contiguous
    check_codes(np.ascontiguousarray(view), model, hermes.assign_codes(to_device(tview, device) if device == "numpy" else to_device(view, device).t().contiguous().t(), model))
    if device != "numpy":
        bf = to_device(view, device).to(torch.bfloat16)
        check_codes(bf.float().cpu().numpy(), model, hermes.assign_codes(bf, model))


def test_float64_and_memmap(tmp_path):
    model = make_model(32, (64, 16), "l2", "orthogonal")
    x = unit_rows(500, 32)
    np.save(tmp_path / "x.npy", x.astype(np.float64))
    mm = np.load(tmp_path / "x.npy", mmap_mode="r")
    check_codes(x, model, hermes.assign_codes(mm, model, batch_size=100))


def test_real_embeddings(real_embeddings):
    x = real_embeddings[:4000]
    rng = np.random.default_rng(0)
    # Honest codebooks without training: data points as level-1 codewords, scaled residual samples after.
    c1 = x[rng.choice(4000, 256, replace=False)].astype(np.float32)
    model = hermes.Model([c1, 0.3 * c1[rng.permutation(256)], 0.1 * c1[rng.permutation(256)]], metric="cos")
    check_codes(x.astype(np.float32), model, hermes.assign_codes(x, model))


def test_transform_matches_reference(device):
    for wkind in ["identity", "orthogonal", "general"]:
        model = make_model(37, (8,), "cos", wkind)
        x = unit_rows(257, 37) * 2
        h = to_numpy(hermes.transform(to_device(x, device), model))
        assert h.dtype == np.float32 and h.shape == x.shape
        np.testing.assert_allclose(h, R.transform(x, model.W, model.b), atol=2e-6)


def test_decode_and_quantization_error(device):
    model = make_model(24, (32, 16, 8), "l2", "orthogonal")
    x = unit_rows(200, 24)
    codes = hermes.assign_codes(to_device(x, device), model)
    for depth in (1, 2, 3):
        rec = to_numpy(hermes.decode(codes, model, depth))
        np.testing.assert_allclose(rec, R.decode(to_numpy(codes), model.codebooks, depth), atol=1e-6)
    err = to_numpy(hermes.quantization_error(to_device(x, device), model))
    h = R.transform(x, model.W, model.b)
    np.testing.assert_allclose(err, ((h - R.decode(to_numpy(codes), model.codebooks)) ** 2).sum(1), atol=1e-5)
    e1 = to_numpy(hermes.quantization_error(to_device(x, device), model, depth=1))
    assert e1.mean() > err.mean()  # more stages, smaller error


# ------------------------------------------------------------------------------------------ bad input
@pytest.fixture
def small_model():
    return make_model(8, (4, 3), "cos", "orthogonal")


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nonfinite_row_named(small_model, bad, device):
    x = unit_rows(50, 8)
    x[17, 3] = bad
    x[30, 0] = bad
    with pytest.raises(ValueError, match=r"assign_codes: x row 17 contains NaN or Inf"):
        hermes.assign_codes(to_device(x, device), small_model, batch_size=8)
    gm = make_model(8, (4, 3), "cos", "general")
    with pytest.raises(ValueError, match=r"x row 17 contains NaN or Inf"):
        hermes.assign_codes(to_device(x, device), gm)


def test_bad_inputs(small_model):
    m = small_model
    with pytest.raises(ValueError, match=r"x has dimension 9 but the model expects d=8"):
        hermes.assign_codes(np.zeros((3, 9), np.float32), m)
    with pytest.raises(TypeError, match=r"assign_codes: x must be a floating array"):
        hermes.assign_codes(np.zeros((3, 8), np.int64), m)
    with pytest.raises(ValueError, match=r"assign_codes: x must be 2-d \[N, d\], got 1-d"):
        hermes.assign_codes(np.zeros(8, np.float32), m)
    with pytest.raises(ValueError, match=r"x must be 2-d \[N, d\], got 3-d"):
        hermes.assign_codes(np.zeros((2, 3, 8), np.float32), m)
    with pytest.raises(TypeError, match=r"x must be a numpy array or a torch tensor, got list"):
        hermes.assign_codes([[0.0] * 8], m)
    with pytest.raises(TypeError, match=r"model must be a hermes.Model"):
        hermes.assign_codes(np.zeros((3, 8), np.float32), "model")
    with pytest.raises(ValueError, match=r"batch_size must be a positive integer"):
        hermes.assign_codes(np.zeros((3, 8), np.float32), m, batch_size=0)
    with pytest.raises(ValueError, match=r"Model: codebooks is an empty list"):
        hermes.Model([])
    with pytest.raises(ValueError, match=r"codebooks\[1\] has dimension 5, codebooks\[0\] has 8"):
        hermes.Model([np.zeros((4, 8)), np.zeros((4, 5))])
    with pytest.raises(ValueError, match=r"Model: W must be \[d, d\]"):
        hermes.Model([np.zeros((4, 8))], W=np.eye(7))
    with pytest.raises(ValueError, match=r"Model: metric must be 'cos' or 'l2'"):
        hermes.Model([np.zeros((4, 8))], metric="dot")
    with pytest.raises(ValueError, match=r"Model: codebooks\[0\] contains NaN or Inf"):
        hermes.Model([np.full((4, 8), np.nan)])
    with pytest.raises(ValueError, match=r"at most 8 are supported"):
        hermes.Model([np.zeros((2, 8))] * 9)


def test_decode_bad_codes(small_model):
    with pytest.raises(ValueError, match=r"decode: codes\[1, 1\] = 3 is outside \[0, 3\) \(levels\[1\] = 3\)"):
        hermes.decode(np.array([[0, 0], [1, 3]]), small_model)
    with pytest.raises(ValueError, match=r"decode: codes\[0, 0\] = -1 is outside"):
        hermes.decode(np.array([[-1, 0]]), small_model)
    with pytest.raises(TypeError, match=r"decode: codes must be an integer array"):
        hermes.decode(np.zeros((2, 2)), small_model)
    with pytest.raises(ValueError, match=r"decode: depth must be an integer in \[1, 2\]"):
        hermes.decode(np.zeros((2, 2), np.int32), small_model, depth=3)


# ------------------------------------------------------------------------------------------ save / load
def test_save_load_roundtrip(tmp_path):
    for wkind in ("identity", "orthogonal", "general"):
        m = make_model(16, (32, 8, 4), "l2", wkind, normalize=False)
        m.save(tmp_path / "m.hermes")
        m2 = hermes.load(tmp_path / "m.hermes")
        assert (m2.levels, m2.d, m2.metric, m2.normalize, m2.fused) == (m.levels, m.d, m.metric, m.normalize, m.fused)
        x = unit_rows(100, 16)
        assert np.array_equal(hermes.assign_codes(x, m), hermes.assign_codes(x, m2))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.hermes"]  # no temp files left


def _rewrite(path, out, *, meta_update=None, drop=None, reshape=None):
    from safetensors.numpy import load_file, save_file
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as f:
        meta = dict(f.metadata())
    t = load_file(str(path))
    if meta_update:
        meta.update(meta_update)
    if drop:
        t.pop(drop)
    if reshape:
        t[reshape] = t[reshape][:-1]
    save_file(t, str(out), metadata=meta)


def test_load_errors_name_file(tmp_path):
    m = make_model(8, (4, 3), "cos", "orthogonal")
    p = tmp_path / "m.hermes"
    m.save(p)
    bad = tmp_path / "bad.hermes"
    _rewrite(p, bad, meta_update={"format_version": "99"})
    with pytest.raises(ValueError, match=r"bad.hermes has format_version '99'"):
        hermes.load(bad)
    _rewrite(p, bad, drop="codebook.1")
    with pytest.raises(ValueError, match=r"bad.hermes is missing tensor 'codebook.1'"):
        hermes.load(bad)
    _rewrite(p, bad, reshape="codebook.0")
    with pytest.raises(ValueError, match=r"bad.hermes: tensor 'codebook.0' has shape \(3, 8\), metadata says \(4, 8\)"):
        hermes.load(bad)
    _rewrite(p, bad, meta_update={"levels": json.dumps([4, 3, 2])})
    with pytest.raises(ValueError, match=r"missing tensor 'codebook.2'"):
        hermes.load(bad)
    (tmp_path / "junk.hermes").write_bytes(b"not a model")
    with pytest.raises(ValueError, match=r"junk.hermes is not a readable safetensors file"):
        hermes.load(tmp_path / "junk.hermes")
    with pytest.raises(FileNotFoundError, match=r"no model file at"):
        hermes.load(tmp_path / "nope.hermes")


# ------------------------------------------------------------------------------------ bf16 screening
@pytest.mark.parametrize("metric", ["cos", "l2"])
@pytest.mark.parametrize("d,Ks", [(7, (256, 64)), (64, (256, 64, 32)), (384, (70, 5, 130, 16)), (1000, (256, 256))])
def test_bf16_screen_is_an_exact_fp32_search(metric, d, Ks):
    # The bf16 GEMM only screens; candidates are rescored in fp32, so codes are the fp32 search's (and the
    # reference's up to near-ties), never a bf16 search's.
    model = make_model(d, Ks, metric, "orthogonal")
    x = unit_rows(2000, d, seed=3) * 1.7
    screened = hermes.assign_codes(x, model, precision="bf16")
    check_codes(x, model, screened)
    fp32 = hermes.assign_codes(x, model, precision="fp32")
    assert (screened != fp32).any(axis=1).mean() <= 0.01


def test_bf16_screen_generic_and_avx512_paths_agree(tmp_path):
    assert hermes.build_info()["cpu_threads"].startswith("OpenMP team of the already loaded "), "torch loads one"
    # The screen's candidate selection and rescoring have AVX-512 and portable versions; HERMES_CPU_ISA=generic
    # forces the portable one in a child process. Both are exact fp32 searches, so codes agree up to fp32
    # near-ties (the rescoring sums in different orders).
    import subprocess
    import sys

    from conftest import child_env

    model = make_model(384, (256, 64, 32), "l2", "orthogonal")
    x = unit_rows(3000, 384, seed=5)
    model.save(tmp_path / "m.hermes")
    np.save(tmp_path / "x.npy", x)
    # The child also runs the row loops on std::thread instead of torch's OpenMP team.
    script = ("import sys, numpy as np, hermes; m = hermes.load(sys.argv[1]); x = np.load(sys.argv[2]); "
              "info = hermes.build_info(); assert info['cpu_screen_simd'] == 'generic', info; "
              "assert info['cpu_threads'].startswith('std::thread'), info; "
              "np.save(sys.argv[3], hermes.assign_codes(x, m, precision='bf16'))")
    env = child_env()
    env["HERMES_CPU_ISA"] = "generic"
    env["HERMES_CPU_THREADS"] = "std"
    subprocess.run([sys.executable, "-c", script, str(tmp_path / "m.hermes"), str(tmp_path / "x.npy"),
                    str(tmp_path / "c.npy")], env=env, check=True, cwd=tmp_path)
    generic = np.load(tmp_path / "c.npy")
    here = hermes.assign_codes(x, model, precision="bf16")
    check_codes(x, model, generic)
    check_codes(x, model, here)
    assert (generic != here).any(axis=1).mean() <= 0.002


def _screen_inputs(model, x):
    """(tables, inv_s, x16, ||x16||, ||dx||, g16) of the CPU screen for x, through hermes._C's operations."""
    import torch

    from hermes import assign as A
    from hermes._backend import _C

    tab, M16 = A._exec_tables(model, "cpu", True)
    n, d = x.shape
    inv, x16 = np.empty(n, np.float32), np.empty((n, d), np.int16)
    xn, dxn = np.empty(n, np.float32), np.empty(n, np.float32)
    _C.norms_split(x, tab, inv, x16, xn, dxn, nthreads=2)
    assert not np.isnan(inv).any()
    g16 = (torch.from_numpy(x16).view(torch.bfloat16) @ M16).view(torch.int16).numpy().copy()
    return tab, inv, x16, xn, dxn, g16


@pytest.mark.parametrize("levels", [(32, 16), (37, 21)])  # (37, 21): the vector paths' masked tails
def test_bf16_screen_nan_bounds_are_rescored_exactly(levels):
    # A bf16 score that is NaN or overflows brackets nothing: that codeword (or, when every lower bound is NaN,
    # every codeword) must be rescored, never silently dropped.
    from hermes._backend import _C

    model = make_model(64, levels, "l2", "orthogonal")
    x = unit_rows(200, 64, seed=9)
    t = model._host_tables()
    tab, inv, x16, xn, dxn, g16 = _screen_inputs(model, x)
    n = len(x)
    expected = hermes.assign_codes(x, model, precision="fp32")
    nan, inf = np.int16(0x7FC0), np.int16(0x7F80)
    rows = [r for r in range(n) if expected[r, 0] != 0][:4]
    g16[rows[0], 0] = nan                                      # a NaN lower bound at level 1
    g16[rows[1], expected[rows[1], 0]] = nan                   # the winner's own bound is NaN
    g16[rows[2], expected[rows[2], 0]] = inf                   # ... or infinite
    g16[rows[3], t.offsets[1] + expected[rows[3], 1]] = nan    # at level 2
    rescored = np.zeros(1, np.int64)
    for pos in range(4):
        codes = np.zeros((n, 2), np.int32)
        _C.screen_rescore(g16, x, tab, inv, xn, dxn, codes, rescored, nthreads=2)
        np.testing.assert_array_equal(codes[rows], expected[rows])
        assert (codes != expected).any(axis=1).mean() <= 0.01  # the other rows: fp32 near-ties at most
        g16[rows[pos]] = nan  # then whole rows of NaN, one more per pass
    codes[:] = 0
    _C.screen_rescore(g16, x, tab, inv, xn, dxn, codes, rescored, nthreads=2)
    np.testing.assert_array_equal(codes[rows], expected[rows])


def test_norms_split_matches_norms_and_torch_rounding():
    # The screen's first pass: inv_s bit-equal to the plain norms pass (same lane order), x16 equal to torch's
    # round-to-nearest-even bf16, and the two norms the error bound uses.
    import torch

    from hermes._backend import _C

    rng = np.random.default_rng(11)
    for d in (1, 31, 32, 33, 384, 1000):
        x = (rng.standard_normal((67, d)) * rng.uniform(0.01, 100, (67, 1))).astype(np.float32)
        wtb = rng.standard_normal(d).astype(np.float32)
        tab = _C.Tables([3], _C.METRIC_L2, True, 0.25, m=np.zeros((d, 3), np.float32), cterm=np.ones(3, np.float32),
                        wtb=wtb)
        inv_ref = np.empty(67, np.float32)
        _C.norms_split(x, tab, inv_ref, nthreads=2)
        inv, x16 = np.empty(67, np.float32), np.empty((67, d), np.int16)
        xn, dxn = np.empty(67, np.float32), np.empty(67, np.float32)
        _C.norms_split(x, tab, inv, x16, xn, dxn, nthreads=2)
        np.testing.assert_array_equal(inv, inv_ref)
        assert not np.isnan(inv).any()
        t16 = torch.from_numpy(x).bfloat16()
        np.testing.assert_array_equal(x16, t16.view(torch.int16).numpy())
        f16 = t16.double().numpy()
        np.testing.assert_allclose(xn, np.linalg.norm(f16, axis=1), rtol=1e-5)
        np.testing.assert_allclose(dxn, np.linalg.norm(x.astype(np.float64) - f16, axis=1), rtol=1e-4)
    x[5, 3] = np.nan
    _C.norms_split(x, tab, inv, x16, xn, dxn, nthreads=2)
    assert np.flatnonzero(np.isnan(inv)).tolist() == [5]


def test_binding_checks_views():
    # Tensors cross the binding as checked views: a wrong shape, dtype, device or a read-only output is refused
    # with a message naming the operation and the argument.
    import torch

    from hermes._backend import _C

    model = make_model(16, (8, 4), "l2", "orthogonal")
    tab, _ = hermes.assign._exec_tables(model, "cpu", False)
    x = unit_rows(10, 16, seed=1)
    codes = np.zeros((10, 2), np.int32)
    with pytest.raises(ValueError, match=r"hermes._C.argmax_levels: g must be \[10, 12\] float32 on cpu, got \[10, 11\]"):
        _C.argmax_levels(np.zeros((10, 11), np.float32), x, tab, None, codes)
    with pytest.raises(ValueError, match=r"hermes._C.norms_split: inv_s must be \[10\] float32 on cpu, got \[10\] float64"):
        _C.norms_split(x, tab, np.zeros(10))
    with pytest.raises(ValueError, match=r"hermes._C.argmax_levels: codes is read-only"):
        ro = np.zeros((10, 2), np.int32)
        ro.flags.writeable = False
        _C.argmax_levels(x @ model._host_tables().M, x, tab, None, ro)
    with pytest.raises(ValueError, match=r"hermes._C.argmax_levels: x must have dense rows"):
        _C.argmax_levels(None, torch.from_numpy(np.asfortranarray(x)), tab, None, codes)
    with pytest.raises(ValueError, match=r"hermes._C.rotate: x must be a torch.Tensor or a numpy array, got list"):
        _C.rotate([[1.0]], None, None, True, None, None)


def test_bf16_screen_degenerate_scores(real_embeddings):
    # Duplicate and zero codewords, documents equal to codewords (zero residuals): many exact ties.
    x = real_embeddings[:3000].astype(np.float32)
    c1 = np.concatenate([x[:100], x[:100], np.zeros((1, 384), np.float32)])
    model = hermes.Model([c1, 0.3 * c1, 0.1 * c1], metric="cos")
    for precision in ("bf16", "auto"):
        codes = hermes.assign_codes(x, model, precision=precision)
        check_codes(x, model, codes, max_tie_frac=None)
        # Codewords 100..199 duplicate 0..99 at every level: by the lowest-index rule they never win, and the
        # screen never rescores them.
        assert not ((codes >= 100) & (codes < 200)).any() and (codes < 100).any()
    from hermes.assign import _duplicate_rows

    brute = [k for k in range(len(c1)) if any(np.array_equal(c1[j], c1[k]) for j in range(k))]
    assert set(range(100, 200)) <= set(brute)  # (the real data repeats a few summaries too)
    np.testing.assert_array_equal(_duplicate_rows(c1), brute)
    np.testing.assert_array_equal(_duplicate_rows(np.eye(3, dtype=np.float32)), np.zeros(0, np.int32))
    with pytest.raises(ValueError, match=r"assign_codes: precision must be one of \('auto', 'fp32', 'bf16'\)"):
        hermes.assign_codes(x, model, precision="fp16")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("metric", ["l2", "cos"])
def test_cuda_screen_equals_cpu_screen_on_same_g16(dtype, metric):
    # One executor on two devices: the CUDA norms + split and screen + rescore kernels against the CPU executor
    # fed the same cuBLAS bf16 GEMM output, bit for bit (norms, split, codes, rescored count); then the whole
    # CUDA path (default precision, the screen) and precision='fp32' (the SIMT kernels) against the reference.
    import torch

    from hermes import assign as A
    from hermes._backend import _C

    dev = "cuda:0"
    stream = torch.cuda.current_stream().cuda_stream
    setting = torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction
    for n, d, levels in [(1, 7, (5,)), (31, 37, (70, 5)), (257, 37, (130, 64, 5)), (2048, 1024, (256, 256, 256)),
                         (33, 64, (5, 130, 70, 33))]:
        model = make_model(d, levels, metric, "orthogonal")
        L = model.L
        xt = torch.from_numpy(unit_rows(n, d, seed=n) * 2.0).to(getattr(torch, dtype))
        x32 = xt.float().numpy()
        xc = xt.to(dev)
        tab_c, M16_c = A._exec_tables(model, dev, True)
        tab_h, _ = A._exec_tables(model, "cpu", True)
        inv, xn, dxn = (torch.empty(n, device=dev) for _ in range(3))
        x16 = None if dtype == "bfloat16" else torch.empty((n, d), dtype=torch.bfloat16, device=dev)
        _C.norms_split(xc, tab_c, inv, x16, xn, dxn, stream=stream)
        a = xc if x16 is None else x16
        with A._exact_bf16_reduction(dev):
            g16 = a @ M16_c
        codes = torch.zeros((n, L), dtype=torch.int32, device=dev)
        count = torch.zeros(1, dtype=torch.int64, device=dev)
        _C.screen_rescore(g16, xc, tab_c, inv, xn, dxn, codes, count, stream=stream)
        torch.cuda.synchronize()
        inv_h, xn_h, dxn_h = (np.empty(n, np.float32) for _ in range(3))
        x16_h = np.empty((n, d), np.int16)
        _C.norms_split(x32, tab_h, inv_h, x16_h, xn_h, dxn_h, nthreads=2)
        for got, want in ((inv, inv_h), (xn, xn_h), (dxn, dxn_h)):
            np.testing.assert_array_equal(got.cpu().numpy().view(np.uint32), want.view(np.uint32))
        np.testing.assert_array_equal(a.cpu().view(torch.int16).numpy(), x16_h)
        codes_h, count_h = np.zeros((n, L), np.int32), np.zeros(1, np.int64)
        _C.screen_rescore(g16.cpu().view(torch.int16).numpy(), x32, tab_h, inv_h, xn_h, dxn_h, codes_h, count_h,
                          nthreads=2)
        np.testing.assert_array_equal(codes.cpu().numpy(), codes_h)
        assert int(count.cpu()[0]) == int(count_h[0])
        for precision in ("auto", "fp32"):
            check_codes(x32, model, hermes.assign_codes(xc, model, precision=precision))
    # The setting the screen turns off for its GEMM is restored afterwards.
    assert torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction == setting


def test_cpu_screen_reads_float16_rows_as_their_float32_values():
    # The CPU screen takes float16 (and bfloat16) rows as they are, converting row by row: the norms, the bf16
    # split, the rescoring and so the codes must be those of the same rows given as float32, bit for bit.
    import torch

    from hermes._backend import _C

    model = make_model(64, (256, 64, 32), "l2", "orthogonal")
    x16 = unit_rows(700, 64, seed=4).astype(np.float16)
    x32 = x16.astype(np.float32)
    ins = {}
    for name, x in (("f16", x16), ("f32", x32), ("bf16", torch.from_numpy(x32).bfloat16())):
        if name == "bf16":  # bfloat16 rows: compare against their own float32 values
            x32b = x.float().numpy()
            ins["bf16_ref"] = _screen_inputs(model, x32b)
        ins[name] = _screen_inputs(model, x)
    for a, b in (("f16", "f32"), ("bf16", "bf16_ref")):
        for u, v in zip(ins[a][1:], ins[b][1:]):
            np.testing.assert_array_equal(u, v)
    tab, inv, _, xn, dxn, g16 = ins["f16"]
    out = {}
    for name, x in (("f16", x16), ("f32", x32)):
        codes, rescored = np.zeros((len(x), 3), np.int32), np.zeros(1, np.int64)
        _C.screen_rescore(torch.from_numpy(g16).view(torch.bfloat16), x, tab, inv, xn, dxn, codes, rescored,
                          nthreads=2)
        out[name] = codes, int(rescored[0])
    assert out["f16"][1] == out["f32"][1] > 0  # rows were rescored, from the float16 rows converted in C++
    np.testing.assert_array_equal(out["f16"][0], out["f32"][0])
    np.testing.assert_array_equal(hermes.assign_codes(x16, model, precision="bf16"),
                                  hermes.assign_codes(x32, model, precision="bf16"))
    check_codes(x32, model, hermes.assign_codes(x16, model, precision="bf16"))


@pytest.mark.parametrize("isa", ["", "avx2", "generic"])
def test_half_conversion_is_exact_on_every_path(tmp_path, isa):
    # float16 input is converted by AVX-512, F16C or scalar code (build_info()["cpu_half_convert"]); each must give
    # numpy's float32 for every one of the 65,536 half values (NaN as NaN), at unaligned starts and odd lengths
    # that leave vector tails. HERMES_CPU_ISA picks the path in a child process.
    import subprocess
    import sys

    from conftest import child_env

    script = """
import sys, numpy as np, hermes
from hermes._backend import _C
info = hermes.build_info()
bits = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
want = bits.view(np.float16).astype(np.float32)
for start, n in ((0, 1 << 16), (1, (1 << 16) - 1), (3, 1000), (7, 9), (5, 15)):
    h = np.ascontiguousarray(bits[start:start + n])
    out = np.full(n, 123.0, np.float32)
    _C.f16_to_f32_cpu(h.view(np.int16), out, 2)
    w = want[start:start + n]
    nan = np.isnan(w)
    assert (np.isnan(out) == nan).all(), (start, n)
    assert (out[~nan].view(np.uint32) == w[~nan].view(np.uint32)).all(), (start, n)
print(info["cpu_half_convert"])
"""
    env = child_env()
    env.pop("HERMES_CPU_ISA", None)
    if isa:
        env["HERMES_CPU_ISA"] = isa
    r = subprocess.run([sys.executable, "-c", script], env=env, check=True, cwd=tmp_path, capture_output=True,
                       text=True)
    path = r.stdout.strip().splitlines()[-1]
    flags = open("/proc/cpuinfo").read()
    if isa == "generic" or " f16c" not in flags:
        assert path == "scalar"
    elif isa == "avx2" or " avx512f" not in flags:
        assert path == "f16c"
    else:
        assert path == "avx512"
