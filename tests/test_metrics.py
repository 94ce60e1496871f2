"""hermes.metrics against hand-computed cases, brute-force loops and scikit-learn."""
import math

import numpy as np
import pytest

from hermes import buckets as hb
from hermes import metrics as hm

sk = pytest.importorskip("sklearn.metrics")


def brute_centroid_cosine(x, ids):
    u = x.astype(np.float64)
    norms = np.linalg.norm(u, axis=1, keepdims=True)
    u = np.divide(u, norms, out=np.zeros_like(u), where=norms > 0)
    total = 0.0
    for b in np.unique(ids):
        m = u[ids == b].sum(0)
        if np.linalg.norm(m) > 0:
            total += (u[ids == b] @ (m / np.linalg.norm(m))).sum()
    return total / len(ids)


def brute_recall(x, ids, k, queries):
    u = x / np.linalg.norm(x, axis=1, keepdims=True)
    out = []
    for i in queries:
        sim = u @ u[i]
        sim[i] = -np.inf
        nbr = np.argsort(-sim)[:k]
        out.append(np.mean(ids[nbr] == ids[i]))
    return float(np.mean(out))


def test_entropy_hand():
    assert hm.entropy([0, 0, 1, 1]) == pytest.approx(math.log(2))
    assert hm.effective_buckets([0, 0, 1, 1]) == pytest.approx(2.0)
    assert hm.entropy(np.array([5, 5, 5])) == 0.0 and hm.effective_buckets([5]) == 1.0
    p = np.array([3, 1]) / 4
    assert hm.entropy([7, 7, 7, 2]) == pytest.approx(-(p * np.log(p)).sum())
    assert math.isnan(hm.entropy(np.zeros(0, np.int64)))


def test_centroid_cosine_hand():
    x = np.array([[1.0, 0], [0, 2.0], [3.0, 0], [3.0, 0]])
    # bucket 0: two orthogonal unit vectors -> each has cos 1/sqrt(2); bucket 1: identical -> 1
    assert hm.centroid_cosine(x, [0, 0, 1, 1]) == pytest.approx((2 / math.sqrt(2) + 2) / 4)
    # antipodal members: mean direction undefined, counted as 0
    assert hm.centroid_cosine(np.array([[1.0, 0], [-1.0, 0]]), [0, 0]) == pytest.approx(0.0)


@pytest.mark.parametrize("n", [1, 31, 32, 33, 257])
def test_centroid_cosine_brute(n):
    rng = np.random.default_rng(n)
    x = rng.standard_normal((n, 13)) + 0.5
    x[0] = 0.0  # a zero row stays zero
    ids = rng.integers(0, 6, n) * 1000
    ref = brute_centroid_cosine(x, ids)
    assert hm.centroid_cosine(x, ids) == pytest.approx(ref, abs=1e-12)
    # tiny chunks: buckets span chunk boundaries
    assert hm.centroid_cosine(x, ids, chunk_bytes=8 * 13 * 3) == pytest.approx(ref, abs=1e-12)
    x16 = x.astype(np.float16)
    assert hm.centroid_cosine(x16, ids) == pytest.approx(brute_centroid_cosine(x16, ids), abs=1e-9)


def test_torch_inputs():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 9)).astype(np.float32)
    ids = rng.integers(0, 4, 64)
    xt, it = torch.from_numpy(x), torch.from_numpy(ids)
    assert hm.centroid_cosine(xt, it) == pytest.approx(hm.centroid_cosine(x, ids), abs=1e-12)
    assert hm.centroid_cosine(xt.bfloat16(), it) == pytest.approx(hm.centroid_cosine(x, ids), abs=1e-2)
    assert hm.recall_at_k(xt, it, 3) == hm.recall_at_k(x, ids, 3)
    assert hm.entropy(it) == hm.entropy(ids)


@pytest.mark.parametrize("n, k", [(2, 1), (31, 5), (257, 10)])
def test_recall_exact(n, k):
    rng = np.random.default_rng(n)
    x = rng.standard_normal((n, 11))
    ids = rng.integers(0, 3, n)
    assert hm.recall_at_k(x, ids, k) == pytest.approx(brute_recall(x, ids, k, range(n)))
    assert hm.recall_at_k(x, ids, k, batch=7) == hm.recall_at_k(x, ids, k)


def test_recall_sampled_queries():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((300, 8))
    ids = rng.integers(0, 4, 300)
    q = np.sort(np.random.default_rng(3).choice(300, size=40, replace=False))
    got = hm.recall_at_k(x, ids, 4, exact_max=100, sample=40, seed=3)
    assert got == pytest.approx(brute_recall(x, ids, 4, q))
    assert got == hm.recall_at_k(x, ids, 4, exact_max=100, sample=40, seed=3)


def test_recall_hand():
    # two tight clusters, each its own bucket: every neighbour shares the bucket
    x = np.array([[1, 0.01], [1, 0.02], [1, 0.03], [-1, 0.01], [-1, 0.02], [-1, 0.03]])
    assert hm.recall_at_k(x, [0, 0, 0, 1, 1, 1], k=2) == 1.0
    assert hm.recall_at_k(x, [0, 1, 2, 3, 4, 5], k=2) == 0.0


@pytest.mark.parametrize("n", [1, 31, 257])
def test_nmi_purity_vs_sklearn(n):
    rng = np.random.default_rng(n)
    labels = rng.choice(np.array(["news", "code", "math", "law"]), n)
    ids = rng.integers(0, 5, n) * 77 + (labels == "code")
    assert hm.nmi(labels, ids) == pytest.approx(sk.normalized_mutual_info_score(labels, ids), abs=1e-12)
    cm = sk.cluster.contingency_matrix(labels, ids)
    assert hm.purity(labels, ids) == pytest.approx(cm.max(axis=0).sum() / n)
    int_labels = rng.integers(-3, 3, n)
    assert hm.nmi(int_labels, ids) == pytest.approx(sk.normalized_mutual_info_score(int_labels, ids), abs=1e-12)


def test_nmi_purity_edge_cases():
    assert hm.nmi([1, 1, 1], [4, 4, 4]) == 1.0 == sk.normalized_mutual_info_score([1, 1, 1], [4, 4, 4])
    assert hm.nmi([0, 1, 0, 1], [0, 0, 1, 1]) == 0.0
    assert hm.nmi([0, 0, 1, 1], [5, 5, 9, 9]) == pytest.approx(1.0)
    assert hm.purity(["a", "a", "b", "b", "b"], [0, 0, 0, 1, 1]) == pytest.approx(4 / 5)
    assert math.isnan(hm.purity(np.zeros(0), np.zeros(0, np.int64)))


def test_report():
    rng = np.random.default_rng(9)
    levels = (4, 3, 5)
    n = 257
    codes = np.stack([rng.integers(0, k, n) for k in levels], 1)
    x = rng.standard_normal((n, 10)).astype(np.float32)
    labels = rng.integers(0, 3, n)
    rows = hm.report(x, codes, levels, labels=labels, k=5, small=4)
    assert [r["depth"] for r in rows] == [1, 2, 3]
    for r in rows:
        ids = hb.bucket_ids(codes, r["depth"], levels)
        assert r["entropy"] == pytest.approx(hm.entropy(ids))
        assert r["effective_buckets"] == pytest.approx(hm.effective_buckets(ids))
        assert r["centroid_cosine"] == pytest.approx(hm.centroid_cosine(x, ids))
        assert r["recall_at_k"] == pytest.approx(hm.recall_at_k(x, ids, 5))
        assert r["nmi"] == pytest.approx(hm.nmi(labels, ids))
        assert r["purity"] == pytest.approx(hm.purity(labels, ids))
        st = hb.pool_sizes(codes, levels, r["depth"], small=4)
        assert all(r[k] == st[k] for k in ("n_buckets", "median", "p90", "share_below"))
    assert rows[0]["purity"] <= rows[1]["purity"] <= rows[2]["purity"]
    slim = hm.report(None, codes, levels, k=None)
    assert "recall_at_k" not in slim[0] and "nmi" not in slim[0] and "centroid_cosine" not in slim[0]
    text = hm.format_report(rows)
    assert "recall_at_k" in text and "L123" in text
    empty = hm.report(np.zeros((0, 4)), np.zeros((0, 2), np.int32), (3, 3))
    assert len(empty) == 2 and empty[0]["n_buckets"] == 0


@pytest.mark.parametrize("call, exc, match", [
    (lambda: hm.entropy(np.zeros((3, 2), np.int64)), ValueError, r"entropy: ids must be a 1-d .*bucket_ids"),
    (lambda: hm.effective_buckets(np.zeros(3)), TypeError, r"effective_buckets: ids .*float64"),
    (lambda: hm.centroid_cosine(np.zeros((4, 3)), [0, 0, 1]), ValueError, r"centroid_cosine: x has 4 rows but ids has 3"),
    (lambda: hm.centroid_cosine(np.zeros(4), [0, 0, 1, 1]), TypeError, r"centroid_cosine: x must be a 2-d float"),
    (lambda: hm.centroid_cosine(np.zeros((4, 2), np.int64), [0, 0, 1, 1]), TypeError, r"x must be a 2-d float"),
    (lambda: hm.recall_at_k(np.ones((4, 3)), [0, 0, 1, 1], k=4), ValueError, r"recall_at_k: k=4 needs at least k \+ 1 = 5 documents, got N=4"),
    (lambda: hm.recall_at_k(np.ones((4, 3)), [0, 0, 1, 1], k=0), ValueError, r"recall_at_k: k must be"),
    (lambda: hm.recall_at_k(np.ones((4, 3)), [0, 0, 1, 1], k=1, batch=0), ValueError, r"batch"),
    (lambda: hm.nmi([0, 1], [0, 1, 1]), ValueError, r"nmi: labels has 2 entries but ids has 3"),
    (lambda: hm.purity(np.zeros((3, 1)), [0, 1, 1]), ValueError, r"purity: labels must be a 1-d"),
    (lambda: hm.report(np.ones((3, 2)), np.zeros((4, 2), np.int32)), ValueError, r"report: x has 3 rows"),
    (lambda: hm.report(None, np.zeros((4, 2), np.int32), labels=[1]), ValueError, r"report: labels has 1"),
])
def test_bad_inputs(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


# ------------------------------------------------------------------------------------ corpus scale
def _stream(tmp_path, parts, kinds):
    """An EmbeddingStream over shards of x written as .npy or parquet."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from hermes._stream import EmbeddingStream
    from hermes.readers import open_shard

    shards = []
    for i, (xp, kind) in enumerate(zip(parts, kinds)):
        p = tmp_path / f"s{i}.{kind}"
        if kind == "npy":
            np.save(p, xp)
        else:
            pq.write_table(pa.table({"embedding": pa.FixedSizeListArray.from_arrays(pa.array(xp.reshape(-1)),
                                                                                     xp.shape[1])}), p,
                           row_group_size=37)
        shards.append(open_shard(p))
    return EmbeddingStream(shards)


@pytest.mark.parametrize("kinds,memory", [(("npy", "parquet"), 1 << 28),   # sequential blocks, per-bucket sums
                                          (("npy", "parquet"), 4096),      # one slot per pass, many passes
                                          (("npy", "npy"), 1 << 28)])      # random access: bucket-sorted pass
def test_report_streaming_equals_report(tmp_path, kinds, memory):
    rng = np.random.default_rng(3)
    n, d, levels = 257, 13, (5, 4, 3)
    centers = rng.standard_normal((7, d))
    x = (centers[rng.integers(0, 7, n)] + 0.3 * rng.standard_normal((n, d))).astype(np.float32)
    x[5] = 0.0  # a zero row
    codes = np.stack([rng.integers(0, K, n) for K in levels], 1)
    codes[:40] = codes[0]  # one big bucket at every depth
    stream = _stream(tmp_path, [x[:100].astype(np.float16), x[100:]], kinds)
    assert stream.random_access == (kinds[1] == "npy")
    x[:100] = x[:100].astype(np.float16)
    ref = hm.report(x, codes, levels, k=5, exact_max=1000)
    rows, info = hm.report_streaming(stream, codes, levels, k=5, queries=1000, block=31, memory=memory)
    assert info["queries"] == n and not info["sampled"] and (info["passes"] > 1) == (memory == 4096)
    assert (info["slots"] == 0) == stream.random_access
    for a, b in zip(ref, rows):
        assert b["centroid_cosine"] == pytest.approx(a["centroid_cosine"], abs=1e-6)
        # the zero row (x[5]) ties with everything: as a query its 5 neighbours are any; one may differ
        assert b["recall_at_k"] == pytest.approx(a["recall_at_k"], abs=1.01 / (n * 5))
        assert b["entropy"] == a["entropy"] and b["median"] == a["median"]
    # sampled queries: the same seeded draw as recall_at_k(exact_max=sample=queries)
    rows, info = hm.report_streaming(stream, codes, levels, k=5, queries=50, seed=4, block=64)
    ids3 = hb.bucket_ids(codes, 3, levels)
    assert info["queries"] == 50
    assert rows[2]["recall_at_k"] == pytest.approx(hm.recall_at_k(x, ids3, 5, exact_max=50, sample=50, seed=4))
    # a document sample: the embedding metrics are those of the sampled rows
    rows, info = hm.report_streaming(stream, codes, levels, k=3, queries=1000, sample=90, seed=2, block=40)
    keep = np.sort(np.random.default_rng(2).choice(n, size=90, replace=False))
    sub = hm.report(x[keep], codes[keep], levels, k=3, exact_max=1000)
    assert info["sampled"] and info["n_scored"] == 90
    for a, b in zip(sub, rows):
        assert b["centroid_cosine"] == pytest.approx(a["centroid_cosine"], abs=1e-6)
        assert b["recall_at_k"] == pytest.approx(a["recall_at_k"], abs=1e-12)
    assert rows[0]["entropy"] == ref[0]["entropy"]  # bucket statistics stay those of all N


@pytest.mark.parametrize("levels", [(3,), (4, 16), (2, 8, 64)])
@pytest.mark.parametrize("block", [1, 2, 7, 64, 4096])
def test_bucket_sorted_pass_any_block(tmp_path, levels, block):
    """The bucket-sorted pass (runs carried across blocks, lone rows counted without a sum) equals the brute force
    for any block size, over float16 and float32 .npy shards read together (mixed dtypes come as float32)."""
    rng = np.random.default_rng(block)
    n, d = 300, 19
    x = rng.standard_normal((n, d)).astype(np.float32)
    x[7] = 0.0  # a zero row
    x[200] *= 1e30  # a finite row whose norm overflows float32 (in the float32 shard)
    codes = np.stack([rng.integers(0, K, n) for K in levels], 1)
    codes[:50] = codes[0]  # one big bucket at every depth, longer than most blocks
    stream = _stream(tmp_path, [x[:120].astype(np.float16), x[120:]], ["npy", "npy"])
    x[:120] = x[:120].astype(np.float16)
    assert stream.random_access
    rows, info = hm.report_streaming(stream, codes, levels, k=None, block=block)
    assert info["passes"] == 1 and info["slots"] == 0
    for depth, r in enumerate(rows, 1):
        ids = hb.bucket_ids(codes, depth, levels)
        xs = x / np.abs(x).max(1, keepdims=True).clip(1e-30)
        assert r["centroid_cosine"] == pytest.approx(brute_centroid_cosine(xs, ids), abs=1e-6)


def test_unit_rows_and_run_sums_kernels():
    """hermes._C.unit_rows_cpu (float16 and float32 rows: zero, overflowing, subnormal and non-finite rows) and
    run_sums_cpu against numpy float64."""
    from hermes import _C

    rng = np.random.default_rng(0)
    x = rng.standard_normal((70, 37)).astype(np.float32)
    x[3] = 0.0
    x[4] *= 1e37  # |x|^2 overflows float32
    x[5] = 1e-40  # every value subnormal
    x16 = x.copy()
    x16[4] = np.clip(x[4] / 1e37 * 3e4, -6e4, 6e4)  # large float16 values
    for src in (x, x16.astype(np.float16)):
        u, nrm = np.empty(src.shape, np.float32), np.empty(len(src))
        assert _C.unit_rows_cpu(src, u, nrm, 2) == -1
        x64 = src.astype(np.float64)
        ref_n = np.linalg.norm(x64, axis=1)
        ref_u = np.divide(x64, ref_n[:, None], out=np.zeros_like(x64), where=ref_n[:, None] > 0)
        np.testing.assert_allclose(nrm, ref_n, rtol=1e-6)
        np.testing.assert_allclose(u, ref_u, rtol=1e-5, atol=1e-7)
        bad = src.copy()
        bad[[40, 60], 9] = [np.inf, np.nan]
        assert _C.unit_rows_cpu(bad, u, nrm, 2) == 40
        bad[40, 9] = 0
        assert _C.unit_rows_cpu(bad, u, nrm, 1) == 60
    starts, ends = np.array([0, 5, 5, 30], np.int64), np.array([5, 5, 29, 70], np.int64)
    out = np.empty((4, 37))
    _C.run_sums_cpu(x, starts, ends, out, 2)
    ref = np.stack([x[a:e].astype(np.float64).sum(0) for a, e in zip(starts, ends)])
    np.testing.assert_allclose(out, ref, rtol=1e-12)
    with pytest.raises(ValueError, match="run_sums_cpu: runs must satisfy"):
        _C.run_sums_cpu(x, np.array([3], np.int64), np.array([2], np.int64), np.empty((1, 37)), 1)


def test_report_streaming_bad_input(tmp_path):
    x = np.ones((10, 4), np.float32)
    stream = _stream(tmp_path, [x], ["npy"])
    with pytest.raises(ValueError, match="report_streaming: the embeddings hold 10 rows but codes has 9"):
        hm.report_streaming(stream, np.zeros((9, 2), np.int64), (2, 2))
    with pytest.raises(ValueError, match=r"report_streaming: k=10 needs at least k \+ 1"):
        hm.report_streaming(stream, np.zeros((10, 2), np.int64), (2, 2), k=10)


def _near_tied_unit_rows(noise, n=600, d=48, seed=5):
    """Unit rows in clusters whose similarities differ by about the bf16 screen's error (noise 0.05: a screen
    without its error bound drops true neighbours) or far less (1e-3: near ties), with exact duplicates and a
    zero row."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((6, d))
    x = centers[rng.integers(0, 6, n)] + noise * rng.standard_normal((n, d))
    x[50:60] = x[49]  # exact duplicates
    x[7] = 0.0
    u, _, bad = hm._unit_rows_block(x.astype(np.float32))
    assert bad < 0
    return u


@pytest.mark.parametrize("noise", [0.05, 1e-3])
@pytest.mark.parametrize("max_cand", [64, 1])  # 1: most screened blocks fall back to the float32 GEMM
def test_knn_screen_gives_the_float32_neighbours(monkeypatch, max_cand, noise):
    import torch

    from hermes.assign import _bf16_gemm_accumulates_fp32
    if not _bf16_gemm_accumulates_fp32():
        pytest.skip("torch's CPU bf16 GEMM does not accumulate in fp32 here: the screen is never used")
    monkeypatch.setattr(hm._KnnSearch, "MAX_CAND", max_cand)
    u = _near_tied_unit_rows(noise)
    n, k = u.shape[0], 7
    q = np.sort(np.random.default_rng(1).choice(n, 90, replace=False))
    qv = torch.from_numpy(u[q])
    runs = {}
    for screen in (True, False):
        s = hm._KnnSearch(qv, q, k, block=37, screen=screen)
        order = np.random.default_rng(2).permutation(n)  # rows arrive in any order, as in the bucket-sorted pass
        for lo in range(0, n, 37):
            ids = order[lo:lo + 37]
            s.add(torch.from_numpy(u[ids]), ids)
        runs[screen] = s
    scr, ref = runs[True], runs[False]
    assert ref.screened == 0 and ref.rescored == 0
    if max_cand == 64:
        assert scr.screened > 0 and scr.rescored > 0
    # the same k-th similarities as the float32 search, and every neighbour is truly among the top k (float64)
    assert torch.allclose(scr.best_v, ref.best_v, rtol=0, atol=2e-6)
    u64 = u.astype(np.float64)
    for r, i in enumerate(q):
        sim = u64 @ u64[i]
        sim[i] = -np.inf
        kth = np.sort(sim)[-k]
        got = scr.best_i[r].numpy()
        assert i not in got and len(set(got)) == k
        assert (sim[got] >= kth - 1e-5).all()


def test_report_streaming_screen_matches_float32(tmp_path):
    from hermes.assign import _bf16_gemm_accumulates_fp32, _cpu_has_fast_bf16
    if not _bf16_gemm_accumulates_fp32():
        pytest.skip("torch's CPU bf16 GEMM does not accumulate in fp32 here: the screen is never used")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 24))[rng.integers(0, 5, 400)] + 0.3 * rng.standard_normal((400, 24))
    u = hm._unit_rows_block(x.astype(np.float32))[0]  # no exact ties: the neighbours are unique
    codes = np.stack([rng.integers(0, 4, 400), rng.integers(0, 5, 400)], 1)
    codes[:, 0] = (u[:, 0] > 0).astype(np.int64)  # bucket by a feature of the rows, so recall is not flat
    stream = _stream(tmp_path, [u[:150], u[150:]], ("npy", "npy"))
    a, ia = hm.report_streaming(stream, codes, (4, 5), k=5, queries=120, block=29, screen=True)
    b, ib = hm.report_streaming(stream, codes, (4, 5), k=5, queries=120, block=29, screen=False)
    c, ic = hm.report_streaming(stream, codes, (4, 5), k=5, queries=120, block=29)  # the default: bf16 where native
    assert ia["search_screened"] > 0 and ib["search_screened"] == 0
    assert (ic["search_screened"] > 0) == _cpu_has_fast_bf16()
    for ra, rb, rc in zip(a, b, c):
        assert ra["recall_at_k"] == rb["recall_at_k"] == rc["recall_at_k"]
