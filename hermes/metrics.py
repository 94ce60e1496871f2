"""Metrics: how good a bucketing is (entropy, centroid cosine, Recall@k, NMI, purity), per depth.

Buckets are given as packed ids [N] (``hermes.buckets.bucket_ids``); ``report`` takes the code
matrix and evaluates every depth. Embeddings x are [N, d] float numpy arrays (float16/32/64)
or torch tensors. All metrics return NaN for N = 0.
"""
from __future__ import annotations

import math

import numpy as np

from . import buckets as _b
from ._validate import check_int, check_seed

__all__ = ["entropy", "effective_buckets", "centroid_cosine", "recall_at_k", "nmi", "purity",
           "report", "format_report"]

_NAN = float("nan")


def _check_x(x, n, fn: str, other: str = "ids"):
    """Embeddings [N, d] as a numpy or torch float array (not copied)."""
    if type(x).__module__.split(".")[0] == "torch":
        if x.ndim != 2 or not x.is_floating_point():
            raise TypeError(f"{fn}: x must be a 2-d float tensor [N, d], got shape "
                            f"{tuple(x.shape)} dtype {x.dtype}")
    else:
        x = np.asarray(x)
        if x.ndim != 2 or not np.issubdtype(x.dtype, np.floating):
            raise TypeError(f"{fn}: x must be a 2-d float array [N, d], got shape {x.shape} "
                            f"dtype {x.dtype}")
    if n is not None and x.shape[0] != n:
        raise ValueError(f"{fn}: x has {x.shape[0]} rows but {other} has {n}; they must match")
    return x


def _check_finite_x(fn: str, x, chunk_rows: int = 1 << 14) -> None:
    """Raises naming the first row of x (its index in x) that holds NaN or Inf; read chunk by chunk."""
    is_np = isinstance(x, np.ndarray)
    for lo in range(0, x.shape[0], chunk_rows):
        xb = x[lo:lo + chunk_rows]
        if is_np:
            bad = np.flatnonzero(~np.isfinite(xb).all(axis=1))
            first = int(bad[0]) if bad.size else -1
        else:
            import torch

            bad = torch.nonzero(~torch.isfinite(xb).all(dim=1))
            first = int(bad[0, 0]) if bad.numel() else -1
        if first >= 0:
            raise ValueError(f"{fn}: x row {lo + first} contains NaN or Inf")


def _numpy_x(x) -> np.ndarray:
    """numpy view of embeddings; torch bfloat16 (no numpy dtype) goes through float32."""
    if isinstance(x, np.ndarray):
        return x
    x = x.detach()
    if str(x.dtype) == "torch.bfloat16":
        x = x.float()
    return x.cpu().numpy()


def _entropy_of_sizes(sizes: np.ndarray) -> float:
    n = sizes.sum()
    if n == 0:
        return _NAN
    p = sizes / n
    return float(-(p * np.log(p)).sum())


def entropy(ids) -> float:
    """Entropy of the bucket-size distribution, in nats.

    ids: integer [N] bucket ids. With p_b = (documents in bucket b) / N over occupied buckets b,
    returns H = -sum_b p_b * ln(p_b): 0 for a single bucket, ln(B) for B equal buckets.
    """
    return _entropy_of_sizes(_b._group(_b._check_ids(ids, "entropy"), inverse=False)[1])


def effective_buckets(ids) -> float:
    """exp(H) with H = ``entropy(ids)``: the number of equal buckets with the same entropy.

    ids: integer [N] bucket ids.
    """
    return math.exp(_entropy_of_sizes(_b._group(_b._check_ids(ids, "effective_buckets"),
                                                inverse=False)[1]))


def centroid_cosine(x, ids, *, chunk_bytes: int = 1 << 26) -> float:
    """Mean cosine between each document and its bucket's mean direction.

    x: float [N, d]; ids: integer [N] bucket ids.
    With u_i = x_i / ||x_i|| (a zero row stays zero) and m_b = normalize(sum_{i in b} u_i),
    returns (1/N) sum_i u_i . m_{b(i)}, which equals (1/N) sum_b ||sum_{i in b} u_i||.
    Computed in float64 over chunks of ~``chunk_bytes`` of rows in bucket order: memory is
    O(chunk + N), not O(buckets * d).
    """
    fn = "centroid_cosine"
    ids = _b._check_ids(ids, fn)
    x = _check_x(x, ids.size, fn)
    _check_finite_x(fn, x)
    return _centroid_cosine(_numpy_x(x), ids, chunk_bytes)


def _centroid_cosine(x: np.ndarray, ids: np.ndarray, chunk_bytes: int = 1 << 26) -> float:
    """centroid_cosine on checked, finite inputs."""
    n = ids.size
    if n == 0:
        return _NAN
    order = np.argsort(ids, kind="stable")
    sid = ids[order]
    rows = max(1, chunk_bytes // (8 * max(1, x.shape[1])))
    total, carry, carry_id = 0.0, None, None
    for s in range(0, n, rows):
        idx = order[s:s + rows]
        xb = x[idx].astype(np.float64)
        peak = np.abs(xb).max(axis=1, keepdims=True) if xb.shape[1] else np.zeros((xb.shape[0], 1))
        np.divide(xb, peak, out=xb, where=peak > 0)  # a finite row whose norm would overflow still normalizes
        norms = np.linalg.norm(xb, axis=1, keepdims=True)
        np.divide(xb, norms, out=xb, where=norms > 0)
        g = sid[s:s + rows]
        starts = np.flatnonzero(np.r_[True, g[1:] != g[:-1]])
        sums = np.add.reduceat(xb, starts, axis=0)
        if carry is not None:
            if g[0] == carry_id:
                sums[0] += carry
            else:
                total += float(np.linalg.norm(carry))
        total += float(np.linalg.norm(sums[:-1], axis=1).sum())
        carry, carry_id = sums[-1], g[-1]
    total += float(np.linalg.norm(carry))
    return total / n


def _neighbors(x, k: int, queries: np.ndarray, batch: int) -> np.ndarray:
    """Indices [Q, k] of each query's k most cosine-similar rows of x, the query itself excluded.

    Query blocks of at most ``batch`` rows (fewer when N is large, so that a block's
    similarity matrix holds at most 2**26 entries) go through torch.mm in float32 + topk.
    """
    import torch

    if isinstance(x, torch.Tensor):
        xt = x
    else:
        import warnings

        with warnings.catch_warnings():  # a read-only memmap is fine: it is only read
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            xt = torch.from_numpy(np.ascontiguousarray(x))
    xt = _unit_rows(xt)
    n = xt.shape[0]
    q_t = torch.from_numpy(queries).to(xt.device)
    rows = max(1, min(batch, (1 << 26) // max(n, 1)))
    out = torch.empty((queries.size, k), dtype=torch.int64)
    with torch.no_grad():
        for s in range(0, queries.size, rows):
            q = q_t[s:s + rows]
            sim = torch.mm(xt[q], xt.T)
            sim[torch.arange(q.numel(), device=sim.device), q] = -float("inf")
            out[s:s + rows] = torch.topk(sim, k, dim=1).indices.cpu()
    return out.numpy()


def _unit_rows(xt):
    """float32 unit rows [N, d] (a zero row stays zero), a new tensor. Each row is first divided by its largest
    |value|, so a finite row whose norm overflows (float32 entries beyond ~1.8e19) still normalizes correctly."""
    import torch

    if xt.shape[0] == 0 or xt.shape[1] == 0:
        return torch.zeros(tuple(xt.shape), dtype=torch.float32, device=xt.device)
    peak = xt.abs().amax(dim=1, keepdim=True)
    if xt.dtype == torch.float64:
        xs = (xt / peak.clamp_min(torch.finfo(torch.float64).tiny)).float()
    else:
        xs = xt.to(torch.float32, copy=True)
        xs /= peak.float().clamp_min(torch.finfo(torch.float32).tiny)
    xs /= torch.linalg.vector_norm(xs, dim=1, keepdim=True).clamp_min(1e-12)
    return xs


def _queries(n: int, exact_max: int, sample: int, seed: int) -> np.ndarray:
    if n <= exact_max:
        return np.arange(n, dtype=np.int64)
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n, size=min(sample, n), replace=False)).astype(np.int64)


def _check_knn_args(n, k, exact_max, sample, batch, fn):
    k = check_int(fn, "k", k, lo=1)
    if n and k > n - 1:
        raise ValueError(f"{fn}: k={k} needs at least k + 1 = {k + 1} documents, got N={n}")
    check_int(fn, "exact_max", exact_max, lo=0)
    check_int(fn, "sample", sample, lo=1)
    check_int(fn, "batch", batch, lo=1)
    return k


def recall_at_k(x, ids, k: int = 10, *, exact_max: int = 100_000, sample: int = 10_000,
                seed: int = 0, batch: int = 2048) -> float:
    """Recall@k: how often a document's nearest neighbours share its bucket.

    x: float [N, d]; ids: integer [N] bucket ids.
    For a query document i, let NN_k(i) be the k documents j != i with the largest cosine
    cos(x_i, x_j), searched among all N documents. Returns the mean over queries of
    |{j in NN_k(i) : ids[j] == ids[i]}| / k.
    Queries are all N documents when N <= ``exact_max``, otherwise ``sample`` documents drawn
    without replacement with ``np.random.default_rng(seed)``. Similarities are float32
    (torch.mm over query blocks of at most ``batch`` rows); among tied similarities the
    neighbours are whichever ``torch.topk`` returns. Requires 1 <= k <= N - 1.
    """
    fn = "recall_at_k"
    ids = _b._check_ids(ids, fn)
    x = _check_x(x, ids.size, fn)
    k = _check_knn_args(ids.size, k, exact_max, sample, batch, fn)
    check_seed(fn, seed)
    _check_finite_x(fn, x)
    if ids.size == 0:
        return _NAN
    q = _queries(ids.size, exact_max, sample, seed)
    return _recall_from(_neighbors(x, k, q, batch), q, ids)


def _recall_from(nbr: np.ndarray, q: np.ndarray, ids: np.ndarray) -> float:
    return float((ids[nbr] == ids[q][:, None]).mean())


def _check_labels(labels, n, fn: str, other: str = "ids") -> np.ndarray:
    labels = _b._to_numpy(labels)
    if labels.ndim != 1:
        raise ValueError(f"{fn}: labels must be a 1-d array [N], got shape {labels.shape}")
    if labels.size != n:
        raise ValueError(f"{fn}: labels has {labels.size} entries but {other} has {n}; they must match")
    if np.issubdtype(labels.dtype, np.floating) or np.issubdtype(labels.dtype, np.complexfloating):
        bad = np.flatnonzero(~np.isfinite(labels))
        if bad.size:
            raise ValueError(f"{fn}: labels row {int(bad[0])} is {labels[bad[0]]}; a class must not be NaN or Inf")
    return np.unique(labels, return_inverse=True)[1].reshape(-1).astype(np.int64)


def _contingency(labels, ids, fn: str):
    """Nonzero cells of the (class, bucket) table: (class idx, bucket idx, count), bucket-major."""
    ids = _b._check_ids(ids, fn)
    li = _check_labels(labels, ids.size, fn)
    _, _, bi = _b._group(ids)
    n_cls = int(li.max()) + 1 if li.size else 1
    cells, counts, _ = _b._group(bi * n_cls + li, inverse=False)
    return cells % n_cls, cells // n_cls, counts


def nmi(labels, ids) -> float:
    """Normalized mutual information between classes and buckets (arithmetic normalization).

    labels: [N] integer or string classes; ids: integer [N] bucket ids.
    NMI = I(C; B) / ((H(C) + H(B)) / 2) with natural logs, as scikit-learn's default
    ``normalized_mutual_info_score``: 1.0 when both sides have a single group, 0.0 when I = 0.
    """
    ci, bj, nij = _contingency(labels, ids, "nmi")
    n = nij.sum()
    if n == 0:
        return _NAN
    a, b = np.bincount(ci, weights=nij), np.bincount(bj, weights=nij)
    if a.size == b.size == 1:
        return 1.0
    pij = nij / n
    mi = float(np.clip((pij * (np.log(nij) + math.log(n) - np.log(a[ci]) - np.log(b[bj]))).sum(),
                       0.0, None))
    if mi < np.finfo(np.float64).eps:
        return 0.0
    h = (_entropy_of_sizes(a) + _entropy_of_sizes(b)) / 2
    return mi / max(h, np.finfo(np.float64).eps)


def purity(labels, ids) -> float:
    """Purity: sum over buckets of the bucket's largest class count, divided by N.

    labels: [N] integer or string classes; ids: integer [N] bucket ids. In [0, 1].
    """
    _, bj, nij = _contingency(labels, ids, "purity")
    n = nij.sum()
    if n == 0:
        return _NAN
    starts = np.flatnonzero(np.r_[True, bj[1:] != bj[:-1]])
    return float(np.maximum.reduceat(nij, starts).sum() / n)


def report(x, codes, levels=None, *, labels=None, k: int | None = 10, small: int = 30,
           exact_max: int = 100_000, sample: int = 10_000, seed: int = 0,
           batch: int = 2048) -> list:
    """All metrics at every depth 1..L.

    x: float [N, d] or None (skips centroid_cosine and recall_at_k); codes: integer [N, L];
    levels as in ``hermes.buckets.bucket_ids``; labels: [N] classes or None (skips nmi, purity);
    k: Recall@k's k, or None to skip it (the neighbours are searched once for all depths);
    small, exact_max, sample, seed, batch: as in ``pool_sizes`` and ``recall_at_k``.
    Returns one dict per depth: depth, name, n_buckets, entropy, effective_buckets,
    [centroid_cosine, recall_at_k], [nmi, purity], then the pool-size statistics of
    ``hermes.buckets.pool_sizes`` (median, mean, p10, p25, p75, p90, min, max, share_below).
    """
    fn = "report"
    codes, levels = _b._check_codes(codes, levels, fn)
    n, L = codes.shape
    if x is not None:
        x = _check_x(x, n, fn, "codes")
        _check_finite_x(fn, x)
    if labels is not None:
        _check_labels(labels, n, fn, "codes")
    small = check_int(fn, "small", small, lo=0)
    nbr = q = None
    if x is not None and k is not None:
        k = _check_knn_args(n, k, exact_max, sample, batch, fn)
        check_seed(fn, seed)
        if n:
            q = _queries(n, exact_max, sample, seed)
            nbr = _neighbors(x, k, q, batch)
    xn = _numpy_x(x) if x is not None else None
    rows = []
    for depth in range(1, L + 1):
        _b._radix(levels, depth, fn)
        ids = _b._pack(codes, depth, levels)
        _, sizes, _ = _b._group(ids, inverse=False)
        h = _entropy_of_sizes(sizes)
        row = dict(depth=depth, name=_b.depth_name(depth), n_buckets=int(sizes.size), entropy=h,
                   effective_buckets=math.exp(h) if n else _NAN)
        if x is not None:
            row["centroid_cosine"] = _centroid_cosine(xn, ids)
            if k is not None:
                row["recall_at_k"] = _recall_from(nbr, q, ids) if n else _NAN
        if labels is not None:
            row["nmi"], row["purity"] = nmi(labels, ids), purity(labels, ids)
        stats = _b._size_stats(sizes, small)
        stats.pop("n_buckets")
        rows.append({**row, **stats})
    return rows


def format_report(rows, columns=None) -> str:
    """Plain-text table of ``report`` rows; columns: keys to show (default all)."""
    return _b.format_table(rows, columns)


# ------------------------------------------------------------------------------------ corpus scale
def _slots(codes: np.ndarray, levels, n_depths: int):
    """Per depth: (row -> bucket index [N], int32 below 2**31 buckets, else int64; bucket sizes [B]) and the
    accumulator slots (int32 indices halve the bytes per document that bound memory at 50M documents).

    Only buckets with >= 2 documents need a running sum (a single document's cosine to its own direction is
    1, or 0 for a zero row). Returns (inv list, sizes list, slot_of list: bucket -> global slot or -1, n_slots).
    """
    invs, sizes_l, slot_of, total = [], [], [], 0
    for depth in range(1, n_depths + 1):
        _, sizes, inv = _b._group(_b._pack(codes, depth, levels))
        multi = sizes >= 2
        s = np.full(sizes.size, -1, np.int64)
        s[multi] = total + np.arange(int(multi.sum()))
        total += int(multi.sum())
        invs.append(inv.astype(np.int32) if sizes.size < 2**31 else inv)
        del inv
        sizes_l.append(sizes)
        slot_of.append(s)
    return invs, sizes_l, slot_of, total


def report_streaming(stream, codes, levels=None, *, labels=None, k: int | None = 10, queries: int = 1000,
                     sample: int | None = None, seed: int = 0, small: int = 30, block: int = 8192,
                     memory: int = 1 << 28, progress: bool = False, screen: bool | None = None,
                     fn: str = "report_streaming") -> tuple:
    """:func:`report` over embeddings read block by block: memory bounded, any N.

    stream: a :class:`hermes._stream.EmbeddingStream` (or any object with ``n``, ``d``, ``blocks(rows, keep)``
    yielding ``(row0, float32 [b, d])`` in row order, and ``take(sorted rows) -> float32 [q, d]``) whose rows
    match ``codes`` [N, L] row for row.

    - centroid_cosine: every depth's per-bucket sums of unit rows are accumulated in float64 slots while the
      rows stream past (one slot of d doubles per bucket with >= 2 documents; single-document buckets add 1,
      or 0 for a zero row); then sum_b ||S_b|| / N. When the slots exceed ``memory`` bytes, the buckets are
      split into ranges and the rows stream once per range.
    - recall_at_k: ``queries`` query documents drawn with ``np.random.default_rng(seed)`` (all when N <=
      queries, as :func:`recall_at_k` with exact_max = sample = queries) are searched against all N rows,
      block by block (a running top-k), in the first pass. The neighbours are those of a float32 search; on
      CPUs that multiply bf16 natively a bf16 GEMM with a rigorous error bound screens each block and only the
      rows that can enter a top k are scored in float32 (:class:`_KnnSearch`). ``screen``: None (that choice),
      True (screen wherever torch runs a bf16 GEMM) or False (float32 GEMM only).
    - sample: when given (< N), centroid_cosine and recall_at_k are computed on that many documents drawn with
      ``np.random.default_rng(seed)`` (the queries then come from the sample, searched against the sample);
      entropy, pool sizes, nmi and purity always use all N.

    fn: the name error messages start with (the caller's, e.g. ``hermes stats``).

    Returns (rows as :func:`report`, info dict: n_scored, sampled, queries, passes, slots, and with Recall@k
    search_steps (blocks x query chunks searched), search_screened (those the bf16 screen served),
    search_rescored (rows scored in float32 after the screen)).
    """
    import torch
    from tqdm.auto import tqdm

    codes, levels = _b._check_codes(codes, levels, fn)
    n, L = codes.shape
    if stream.n != n:
        raise ValueError(f"{fn}: the embeddings hold {stream.n:,} rows but codes has {n:,}; they must match")
    block = check_int(fn, "block", block, lo=1)
    check_int(fn, "memory", memory, lo=1)
    check_seed(fn, seed)
    keep = None
    if sample is not None:
        sample = check_int(fn, "sample", sample, lo=1)
        if sample < n:
            keep = np.sort(np.random.default_rng(seed).choice(n, size=sample, replace=False))
    rows = report(None, codes, levels, labels=labels, k=None, small=small)
    sc = codes if keep is None else codes[keep]
    m = sc.shape[0]
    info = dict(n_scored=m, sampled=keep is not None, queries=0, passes=0, slots=0)
    if k is not None:
        k = _check_knn_args(m, k, queries, queries, 1, fn)
    if m == 0:
        for r in rows:
            r["centroid_cosine"] = _NAN
            if k is not None:
                r["recall_at_k"] = _NAN
        return rows, info
    for depth in range(1, L + 1):
        _b._radix(levels, depth, fn)
    invs, sizes_l, slot_of, n_slots = _slots(sc, levels, L)
    d = stream.d
    per_pass = max(1, memory // (8 * max(d, 1)))
    ranges = [(s, min(s + per_pass, n_slots)) for s in range(0, max(n_slots, 1), per_pass)]
    totals = np.zeros(L)
    order_key = _b._pack(sc, L, levels)
    search = None
    if k is not None:
        q = _queries(m, queries, queries, seed)
        src = q if keep is None else keep[q]
        qv = torch.from_numpy(_unit_rows_block(stream.take(src))[0])  # a bad query row is named by the pass below
        search = _KnnSearch(qv, q, k, block, screen=screen)
        info["queries"] = int(q.size)
    if getattr(stream, "random_access", False):
        info.update(passes=1, slots=0)
        totals = _centroid_sorted(fn, stream, sc, levels, invs, order_key, keep, block, progress,
                                  search)
        ranges = []
    else:
        info.update(passes=len(ranges), slots=n_slots)
    with tqdm(total=m * len(ranges), unit="rows", unit_scale=True, desc="stats", disable=not progress or not ranges,
              dynamic_ncols=True) as bar:  # no ranges: the bucket-sorted pass above did the work, with its own bar
        for p, (s0, s1) in enumerate(ranges):
            acc = torch.zeros((s1 - s0, d), dtype=torch.float64)
            for lo, x in stream.blocks(block, keep):
                b = x.shape[0]
                u, norms = _unit_rows_checked(fn, stream, x, np.arange(lo, lo + b) if keep is None else
                                              keep[lo:lo + b])
                if p == 0:
                    nz = norms > 0
                    for depth in range(L):
                        single = sizes_l[depth][invs[depth][lo:lo + b]] == 1
                        totals[depth] += float((single & nz).sum())
                    if search is not None:
                        search.add(torch.from_numpy(u), np.arange(lo, lo + b))
                # Rows sorted by their deepest bucket: every depth's buckets are contiguous runs, and a bucket's
                # run is a union of its children's runs, so only the deepest level sums rows; each shallower
                # level sums its children's sums.
                order = np.argsort(order_key[lo:lo + b], kind="stable")
                sums = torch.from_numpy(u)[torch.from_numpy(order)]
                child_starts = None
                for depth in reversed(range(L)):
                    g = invs[depth][lo:lo + b][order]
                    starts = np.flatnonzero(np.r_[True, g[1:] != g[:-1]])
                    at = starts if child_starts is None else np.searchsorted(child_starts, starts)
                    lengths = np.diff(np.r_[at, sums.shape[0]])
                    sums = torch.segment_reduce(sums, "sum", lengths=torch.from_numpy(lengths), axis=0)
                    child_starts = starts
                    first = slot_of[depth][g[starts]]
                    ok = (first >= s0) & (first < s1)
                    if ok.any():
                        acc.index_add_(0, torch.from_numpy(first[ok] - s0), sums[torch.from_numpy(ok)].double())
                bar.update(b)
            norms_acc = torch.linalg.vector_norm(acc, dim=1).numpy()
            for depth in range(L):
                sl = slot_of[depth]
                mine = sl[(sl >= s0) & (sl < s1)] - s0
                totals[depth] += float(norms_acc[mine].sum())
            del acc
    recall = None
    if k is not None:
        ids_l = invs
        recall = [float((ids[search.best_i.numpy()] == ids[search.q][:, None]).mean()) for ids in ids_l]
        info.update(search_steps=search.steps, search_screened=search.screened, search_rescored=search.rescored)
    for depth, r in enumerate(rows):
        r["centroid_cosine"] = float(totals[depth] / m)
        if k is not None:
            r["recall_at_k"] = recall[depth]
    return rows, info


def _centroid_sorted(fn, stream, sc, levels, invs, order_key, keep, block, progress, search) -> np.ndarray:
    """Per depth, sum_b ||sum_{i in b} u_i|| in one pass over the rows gathered in deepest-bucket order.

    Every depth's buckets are then contiguous runs of the stream: a block closes the runs that end in it (their
    float64 sums' norms are added; a run of one row adds 1, or 0 for a zero row, without a sum) and carries its
    last, open run per depth into the next block. Memory: about two blocks. ``search``: the Recall@k search (:class:`_KnnSearch`), fed in the same pass, or None.
    """
    import torch
    from tqdm.auto import tqdm

    from ._backend import _C
    from .assign import _nthreads

    L, nt = len(invs), _nthreads()
    order = np.argsort(order_key, kind="stable")
    rows = order if keep is None else keep[order]
    totals = np.zeros(L)
    carry = [None] * L  # (bucket index, float64 sum [d]) of the open run per depth
    with tqdm(total=order.size, unit="rows", unit_scale=True, desc="stats", disable=not progress,
              dynamic_ncols=True) as bar:
        for lo, (_, x) in zip(range(0, order.size, block), stream.gather_blocks(rows, rows=block)):
            pos = order[lo:lo + block]  # positions among the scored documents
            u, norms = _unit_rows_checked(fn, stream, x, rows[lo:lo + block])
            if search is not None:
                search.add(torch.from_numpy(u), pos)
            b = pos.size
            for depth in range(L):
                g = invs[depth][pos]
                starts = np.flatnonzero(np.r_[True, g[1:] != g[:-1]])
                ends = np.r_[starts[1:], b]
                need = ends - starts >= 2
                need[0] = need[-1] = True  # the first run may continue the carry, the last stays open
                lone = starts[~need]
                totals[depth] += float(np.count_nonzero(norms[lone] > 0))
                idx = np.flatnonzero(need)
                sums = np.empty((idx.size, u.shape[1]), np.float64)
                _C.run_sums_cpu(u, np.ascontiguousarray(starts[idx]), np.ascontiguousarray(ends[idx]), sums, nt)
                c = carry[depth]
                if c is not None:
                    if c[0] == g[0]:
                        sums[0] += c[1]
                    else:
                        totals[depth] += float(np.linalg.norm(c[1]))
                if idx.size > 1:
                    totals[depth] += float(np.linalg.norm(sums[:-1], axis=1).sum())
                carry[depth] = (g[starts[-1]], sums[-1].copy())
            bar.update(b)
    for depth in range(L):
        if carry[depth] is not None:
            totals[depth] += float(np.linalg.norm(carry[depth][1]))
    return totals


def _unit_rows_block(x: np.ndarray) -> tuple:
    """(unit rows float32 [b, d], norms float64 [b], first row with NaN or Inf or -1) of a float block, in C++
    (``_C.unit_rows_cpu``): a zero row stays zero; each row is divided by its largest |value| first, so a finite
    row whose norm overflows float32 still normalizes correctly; a row with NaN or Inf becomes 0."""
    from ._backend import _C
    from .assign import _nthreads

    x = np.ascontiguousarray(x)
    if x.dtype not in (np.float16, np.float32):
        x = x.astype(np.float32)
    u = np.empty(x.shape, np.float32)
    norms = np.empty(x.shape[0], np.float64)
    bad = _C.unit_rows_cpu(x, u, norms, _nthreads())
    return u, norms, bad


def _unit_rows_checked(fn, stream, x: np.ndarray, rows: np.ndarray) -> tuple:
    """(unit rows float32 [b, d], norms float64 [b]) of a block whose global rows are ``rows``; raises naming
    the shard file and row (else the global row) of its first row with NaN or Inf."""
    u, norms, bad = _unit_rows_block(x)
    if bad >= 0:
        row = int(rows[bad])
        where = getattr(stream, "locate", None)
        if where is None:
            raise ValueError(f"{fn}: embeddings row {row} contains NaN or Inf")
        path, local = where(row)
        raise ValueError(f"{fn}: {path} row {local} contains NaN or Inf (row {row} of the embeddings)")
    return u, norms


class _KnnSearch:
    """Recall@k's search: each query's running top-k (exact float32 similarities, no self) over unit rows
    streamed past in blocks.

    Where the CPU multiplies bf16 natively (AVX512-BF16 or AMX, and torch's bf16 GEMM passes the fp32-accumulation
    probe of :mod:`hermes.assign`), a block is screened by a bf16 GEMM once every query holds k neighbours: with
    unit rows q and u split as q = q16 + dq (bf16 rounding to nearest, so ||dq|| <= 2^-8 ||q||), the bf16 score
    s16 (fp32 accumulation, bf16 output) is within ``SCREEN_ERR`` of q.u, which covers 2^-8 |s16| (output
    rounding), ||q16|| ||du|| + ||dq|| ||u16|| + ||dq|| ||du|| (the split), d 2^-24 ||q16|| ||u16|| (fp32
    accumulation) and the float32 rounding of the kept similarities (2 d 2^-24). A row can enter a query's top
    k only if s16 + err reaches the query's current k-th similarity, so only those rows are scored exactly (in
    float32) and merged: the neighbours are those of the float32 search. Otherwise, and for a block whose
    candidates would exceed ``MAX_CAND`` per query, the block is searched by a float32 GEMM.
    """

    MAX_CAND = 64  # candidates per query in one block before the float32 GEMM is cheaper

    def __init__(self, qv, q: np.ndarray, k: int, block: int, screen: bool | None = None):
        import torch

        from .assign import _bf16_gemm_accumulates_fp32, _cpu_has_fast_bf16

        self.qv, self.q, self.k = qv, q, k
        self.best_v = torch.full((q.size, k), -float("inf"))
        self.best_i = torch.zeros((q.size, k), dtype=torch.int64)
        self.qchunk = max(1, (1 << 25) // block)  # at most 2**25 similarities held at once
        self.screen = _cpu_has_fast_bf16() if screen is None else bool(screen)
        if self.screen and not _bf16_gemm_accumulates_fp32():
            raise RuntimeError("the Recall@k screen needs torch's CPU bf16 GEMM to accumulate in fp32, and a probe "
                               "says this torch/CPU does not; pass screen=False")
        d = qv.shape[1]
        unit = 1.0 + d * 2.0 ** -24  # ||u|| of a float32 unit row, rounding included
        n16, nd = (1.0 + 2.0 ** -8) * unit, 2.0 ** -8 * unit  # bounds of ||u16|| and ||du||
        self.err = 1.01 * (2.0 ** -8 * (n16 * n16 + 0.01) + 2 * n16 * nd + nd * nd + d * 2.0 ** -24 * n16 * n16) \
            + 2 * d * 2.0 ** -24
        self.q16 = qv.bfloat16() if self.screen else None
        self.q_t = torch.from_numpy(np.ascontiguousarray(q, dtype=np.int64))
        self.steps = self.screened = self.rescored = 0  # (block, query chunk) steps, those screened, rows rescored

    def add(self, u, ids: np.ndarray) -> None:
        """Merges unit float32 rows ``u`` [b, d] whose positions among the scored documents are ``ids`` [b]
        (increasing or not) into every query's top k; a query's own row is never its neighbour."""
        import torch

        ids = np.ascontiguousarray(ids, dtype=np.int64)
        ids_t = torch.from_numpy(ids)
        q = self.q
        j = np.searchsorted(q, ids)
        is_q = (j < q.size) & (q[np.minimum(j, q.size - 1)] == ids)
        qj, cols = j[is_q], np.flatnonzero(is_q)  # block rows that are queries: their own columns are excluded
        u16 = None
        with torch.no_grad():
            for s in range(0, q.size, self.qchunk):
                e = min(q.size, s + self.qchunk)
                mine = (qj >= s) & (qj < e)
                own_r, own_c = torch.from_numpy(qj[mine] - s), torch.from_numpy(cols[mine])
                bv = self.best_v[s:e]
                self.steps += 1
                if self.screen and bool(torch.isfinite(bv[:, -1]).all()):
                    if u16 is None:
                        u16 = u.bfloat16()
                    s16 = torch.mm(self.q16[s:e], u16.T)
                    thr = bv[:, -1] - self.err  # a row is a candidate for query i when s16 >= thr[i]
                    hot = (s16.amax(1).float() >= thr).nonzero()[:, 0]  # most queries have none in a block
                    nz = (s16[hot] >= thr[hot, None]).nonzero()
                    if nz.shape[0] <= self.MAX_CAND * (e - s):
                        self.screened += 1
                        self.rescored += int(nz.shape[0])
                        if nz.shape[0]:
                            qi, col = hot[nz[:, 0]], nz[:, 1]
                            exact = torch.empty(qi.numel())
                            for c in range(0, qi.numel(), 4096):  # at most 2 x 4096 rows gathered at once
                                exact[c:c + 4096] = (self.qv[s:e][qi[c:c + 4096]] * u[col[c:c + 4096]]).sum(1)
                            exact[ids_t[col] == self.q_t[s:e][qi]] = -float("inf")  # not its own neighbour
                            counts = torch.bincount(qi, minlength=e - s)
                            rank = torch.arange(qi.numel()) - (torch.cumsum(counts, 0) - counts)[qi]
                            width = int(counts.max())
                            pv = torch.full((e - s, width), -float("inf"))
                            pi = torch.zeros((e - s, width), dtype=torch.int64)
                            pv[qi, rank] = exact
                            pi[qi, rank] = ids_t[col]
                            self._merge(s, e, pv, pi)
                        continue
                sim = torch.mm(self.qv[s:e], u.T)
                sim[own_r, own_c] = -float("inf")
                v, i = torch.topk(sim, min(self.k, u.shape[0]), dim=1)
                self._merge(s, e, v, ids_t[i])

    def _merge(self, s: int, e: int, v, i) -> None:
        import torch

        v = torch.cat([self.best_v[s:e], v], 1)
        i = torch.cat([self.best_i[s:e], i], 1)
        top = torch.topk(v, self.k, dim=1)
        self.best_v[s:e] = top.values
        self.best_i[s:e] = torch.gather(i, 1, top.indices)
