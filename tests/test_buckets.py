"""hermes.buckets: packing, its inverse, per-depth pool statistics, and boundary checks."""
import numpy as np
import pytest

from hermes import buckets as hb

SIZES = [0, 1, 31, 32, 33, 257]
LEVELS = [(3,), (5, 2), (7, 3, 11), (2, 9, 4, 6)]


def make_codes(n, levels, seed=0, dtype=np.int32):
    rng = np.random.default_rng(seed)
    return np.stack([rng.integers(0, k, n) for k in levels], axis=1).astype(dtype).reshape(n, len(levels))


class Model:  # anything with .levels
    levels = (7, 3, 11)


def test_hand_packing():
    codes = np.array([[2, 3, 4], [0, 0, 0], [2, 4, 6]], np.int32)
    lv = (3, 5, 7)
    assert hb.bucket_ids(codes, 1, lv).tolist() == [2, 0, 2]
    assert hb.bucket_ids(codes, 2, lv).tolist() == [13, 0, 14]
    assert hb.bucket_ids(codes, 3, lv).tolist() == [95, 0, 104]
    assert hb.bucket_ids(codes, 3, lv).dtype == np.int64
    assert hb.bucket_ids(codes, 2).tolist() == [2 * 256 + 3, 0, 2 * 256 + 4]  # default K = 256


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("levels", LEVELS)
def test_roundtrip_and_order(n, levels):
    codes = make_codes(n, levels)
    every = hb.all_bucket_ids(codes, levels)
    assert every.shape == (n, len(levels)) and every.dtype == np.int64
    for d in range(1, len(levels) + 1):
        ids = hb.bucket_ids(codes, d, levels)
        np.testing.assert_array_equal(ids, every[:, d - 1])
        np.testing.assert_array_equal(hb.unpack(ids, d, levels), codes[:, :d])
        assert ids.min(initial=0) >= 0 and ids.max(initial=0) < np.prod(levels[:d])
        # ids sort exactly like the code prefixes (lexicographic)
        lex = np.lexsort(codes[:, :d].T[::-1]) if n else np.zeros(0, int)
        np.testing.assert_array_equal(ids[lex], np.sort(ids))
        if d > 1:  # parent = id // K_d
            np.testing.assert_array_equal(ids // levels[d - 1], every[:, d - 2])


def test_levels_object_torch_and_dtypes():
    torch = pytest.importorskip("torch")
    codes = make_codes(50, Model.levels)
    ref = hb.bucket_ids(codes, 3, Model.levels)
    np.testing.assert_array_equal(hb.bucket_ids(codes, 3, Model()), ref)
    np.testing.assert_array_equal(hb.bucket_ids(torch.from_numpy(codes), 3, Model()), ref)
    for dt in (np.uint8, np.int16, np.uint64, np.int64):
        np.testing.assert_array_equal(hb.bucket_ids(codes.astype(dt), 3, Model.levels), ref)
        np.testing.assert_array_equal(hb.all_bucket_ids(codes.astype(dt), Model.levels)[:, 2], ref)
    np.testing.assert_array_equal(hb.unpack(torch.from_numpy(ref), 3, Model()), codes)


@pytest.mark.parametrize("scale", [1, 10**9])  # bincount path and sort path
def test_bucket_sizes_matches_unique(scale):
    rng = np.random.default_rng(1)
    ids = rng.integers(0, 40, 1000) * scale - 7
    u, c = np.unique(ids, return_counts=True)
    got_u, got_c = hb.bucket_sizes(ids)
    np.testing.assert_array_equal(got_u, u)
    np.testing.assert_array_equal(got_c, c)
    assert got_u.dtype == got_c.dtype == np.int64
    np.testing.assert_array_equal(hb.occupied(ids), u)
    inv = hb._group(ids)[2]
    np.testing.assert_array_equal(u[inv], ids)


def test_empty():
    codes = np.zeros((0, 3), np.int32)
    assert hb.bucket_ids(codes, 2).shape == (0,)
    u, c = hb.bucket_sizes(np.zeros(0, np.int64))
    assert u.size == c.size == 0
    st = hb.pool_sizes(codes, None, 3)
    assert st["n_buckets"] == 0 and np.isnan(st["median"])
    p, ch, off = hb.children(codes, None, 2)
    assert p.size == ch.size == 0 and off.tolist() == [0]
    assert len(hb.summary_table(codes)) == 3


@pytest.mark.parametrize("levels", LEVELS)
def test_pool_sizes(levels):
    codes = make_codes(257, levels, seed=2)
    for d in range(1, len(levels) + 1):
        st = hb.pool_sizes(codes, levels, d, small=4)
        _, sizes = np.unique(codes[:, :d], axis=0, return_counts=True)
        assert st["n_buckets"] == sizes.size and st["nominal"] == np.prod(levels[:d])
        assert st["median"] == np.median(sizes) and st["mean"] == pytest.approx(sizes.mean())
        for key, q in [("p10", 0.1), ("p25", 0.25), ("p75", 0.75), ("p90", 0.9)]:
            assert st[key] == pytest.approx(np.quantile(sizes, q))
        assert (st["min"], st["max"]) == (sizes.min(), sizes.max())
        assert st["share_below"] == pytest.approx(np.mean(sizes < 4))
        assert st["name"] == "L" + "1234"[:d]


@pytest.mark.parametrize("levels", LEVELS)
def test_children_csr(levels):
    codes = make_codes(257, levels, seed=3)
    for d in range(1, len(levels) + 1):
        par, ch, off = hb.children(codes, levels, d)
        every = hb.all_bucket_ids(codes, levels)
        parents = every[:, d - 2] if d > 1 else np.zeros(len(codes), np.int64)
        expect = {}
        for p_, c_ in set(zip(parents.tolist(), every[:, d - 1].tolist())):
            expect.setdefault(p_, []).append(c_)
        assert par.tolist() == sorted(expect)
        assert off[0] == 0 and off[-1] == ch.size and np.all(np.diff(off) > 0)
        for i, p in enumerate(par.tolist()):
            assert ch[off[i]:off[i + 1]].tolist() == sorted(expect[p])


def test_summary_table_and_format():
    levels = (7, 3, 11)
    codes = make_codes(257, levels, seed=4)
    rows = hb.summary_table(codes, levels, small=5)
    assert [r["name"] for r in rows] == ["L1", "L12", "L123"]
    for r in rows:
        ref = hb.pool_sizes(codes, levels, r["depth"], small=5)
        assert {k: r[k] for k in ref} == ref
        assert r["occupancy"] == pytest.approx(r["n_buckets"] / r["nominal"])
    assert rows[0]["children_mean"] == rows[0]["n_buckets"]  # one root parent
    assert rows[1]["children_mean"] == pytest.approx(rows[1]["n_buckets"] / rows[0]["n_buckets"])
    text = hb.format_table(rows)
    lines = text.splitlines()
    assert len(lines) == 2 + len(rows) and "share_below" in lines[0] and "L123" in lines[-1]
    assert hb.format_table([]) == "(no rows)"


@pytest.mark.parametrize("call, exc, match", [
    (lambda: hb.bucket_ids(np.zeros(5, np.int32), 1), ValueError,
     r"bucket_ids: codes must be a 2-d integer array \[N, L\], got shape \(5,\)"),
    (lambda: hb.bucket_ids(np.zeros((5, 2)), 1), TypeError, r"bucket_ids: codes .*dtype float64"),
    (lambda: hb.bucket_ids(np.zeros((5, 2), bool), 1), TypeError, r"codes .*dtype bool"),
    (lambda: hb.bucket_ids(np.zeros((5, 2), np.int32), 0), ValueError, r"bucket_ids: depth must be an integer in \[1, 2\], got 0"),
    (lambda: hb.bucket_ids(np.zeros((5, 2), np.int32), 3), ValueError, r"depth must be an integer in \[1, 2\], got 3"),
    (lambda: hb.bucket_ids(np.zeros((5, 2), np.int32), True), TypeError, r"depth must be an integer"),
    (lambda: hb.bucket_ids(np.zeros((5, 2), np.int32), 1.0), TypeError, r"depth must be an integer"),
    (lambda: hb.bucket_ids(np.array([[0, 1], [2, 4]]), 2, (3, 4)), ValueError,
     r"codes\[1, 1\] = 4 is outside \[0, 4\).*first bad row 1, column 1"),
    (lambda: hb.bucket_ids(np.array([[0, 1], [-1, 0]]), 2, (3, 4)), ValueError, r"codes\[1, 0\] = -1"),
    (lambda: hb.bucket_ids(np.zeros((2, 2), np.int32), 1, (3, 4, 5)), ValueError, r"levels has 3 entries"),
    (lambda: hb.bucket_ids(np.zeros((2, 2), np.int32), 1, (3, 0)), ValueError, r"levels must be a positive integer"),
    (lambda: hb.bucket_ids(np.zeros((2, 2), np.int32), 1, "ab"), TypeError, r"levels must be a sequence"),
    (lambda: hb.bucket_ids(np.zeros((2, 2), np.int32), 2, (2**32, 2**32)), ValueError,
     r"bucket_ids: depth=2 .*2\*\*63"),
    (lambda: hb.all_bucket_ids(np.zeros((2, 2), np.int32), (2**32, 2**32)), ValueError, r"depth=2"),
    (lambda: hb.unpack(np.array([0, 15]), 2, (3, 5)), ValueError, r"unpack: ids\[1\] = 15 is outside \[0, 15\)"),
    (lambda: hb.unpack(np.zeros((2, 2), np.int64), 2, (3, 5)), ValueError, r"unpack: ids must be a 1-d"),
    (lambda: hb.bucket_sizes(np.zeros((3, 2), np.int64)), ValueError, r"bucket_sizes: ids .*bucket_ids"),
    (lambda: hb.bucket_sizes(np.zeros(3)), TypeError, r"bucket_sizes: ids .*float64"),
    (lambda: hb.pool_sizes(np.zeros((2, 2), np.int32), None, 1, small=-1), ValueError, r"pool_sizes: small"),
    (lambda: hb.children(np.zeros((2, 2), np.int32), None, 5), ValueError, r"children: depth"),
])
def test_bad_inputs(call, exc, match):
    with pytest.raises(exc, match=match):
        call()
