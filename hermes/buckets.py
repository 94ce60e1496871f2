"""Buckets: packed prefix ids of hierarchical codes, and pool-size statistics per depth.

A document's code row is (c1, ..., cL) with 0 <= c_l < K_l. Its bucket at depth D is the
prefix (c1, ..., cD), packed into one int64 by mixed radix with the per-level sizes K_l:

    id_D = ((c1 * K2 + c2) * K3 + c3) ... * K_D + c_D

so ids at depth D lie in [0, K1 * ... * K_D), sort like the code prefixes, and the parent of an
id at depth D is ``id // K_D``. Depth 1 ("L1") is c1, depth 2 ("L12") is (c1, c2), and so on.

``levels`` is either a sequence of codebook sizes (K_1, ..., K_L) or any object with a
``.levels`` attribute holding one (e.g. a ``hermes.Model``). ``levels=None`` means
``DEFAULT_K`` = 256 codewords at every level, the paper's codebooks.

Everything is vectorized over documents: per-bucket counts use ``np.bincount`` when the id
range is small (at most ``2**26`` and ``8 N``: L1, L12, and L123 with 256-word codebooks on a
large corpus) and one sort otherwise.
"""
from __future__ import annotations

import math

import numpy as np

from ._validate import check_codes, check_int, to_numpy as _to_numpy

__all__ = [
    "DEFAULT_K", "bucket_ids", "all_bucket_ids", "unpack", "bucket_sizes", "occupied",
    "pool_sizes", "children", "summary_table", "format_table", "depth_name",
]

DEFAULT_K = 256
_BINCOUNT_MAX = 1 << 26  # id ranges up to this are counted with np.bincount (<= 512 MiB of counts)


# ----------------------------------------------------------------------------------------------
# Boundary checks (shared with hermes.metrics and hermes.mix)

def _resolve_levels(levels, n_levels, fn: str) -> tuple:
    """Codebook sizes (K_1, ..., K_L) as a tuple of ints; L must equal ``n_levels`` unless None."""
    if levels is None:
        return (DEFAULT_K,) * n_levels
    if hasattr(levels, "levels"):
        levels = levels.levels
    if isinstance(levels, (str, bytes)) or not hasattr(levels, "__len__"):
        raise TypeError(f"{fn}: levels must be a sequence of codebook sizes or an object with "
                        f".levels, got {type(levels).__name__}")
    out = tuple(check_int(fn, "levels", k, lo=1) for k in _to_numpy(levels).tolist())
    if n_levels is not None and len(out) != n_levels:
        raise ValueError(f"{fn}: levels has {len(out)} entries {out}, but codes have {n_levels} "
                         f"columns; pass one codebook size per level")
    return out


def _check_codes(codes, levels, fn: str, name: str = "codes"):
    """Validate a code matrix against its codebook sizes (``levels`` resolved as above).

    Returns (codes [N, L] integer numpy array, levels tuple of L ints).
    """
    codes = _to_numpy(codes)
    if codes.ndim != 2:
        raise ValueError(f"{fn}: {name} must be a 2-d integer array [N, L], got shape {codes.shape} "
                         f"dtype {codes.dtype}")
    if codes.shape[1] == 0:
        raise ValueError(f"{fn}: {name} must have at least one level, got shape {codes.shape}")
    if not np.issubdtype(codes.dtype, np.integer):
        raise TypeError(f"{fn}: {name} must be a 2-d integer array [N, L], got shape {codes.shape} "
                        f"dtype {codes.dtype}")
    levels = _resolve_levels(levels, codes.shape[1], fn)
    check_codes(fn, name, codes, levels)
    if codes.dtype == np.uint64:  # numpy mixes uint64 with int64 into float64
        codes = codes.astype(np.int64)
    return codes, levels


def _check_depth(depth, n_levels: int, fn: str, lo: int = 1) -> int:
    return check_int(fn, "depth", depth, lo=lo, hi=n_levels)


def _check_ids(ids, fn: str, name: str = "ids") -> np.ndarray:
    """Validate packed bucket ids: a 1-d integer array, returned as int64 [N]."""
    ids = _to_numpy(ids)
    if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer):
        hint = " (for a code matrix use hermes.buckets.bucket_ids first)" if ids.ndim == 2 else ""
        raise (ValueError if ids.ndim != 1 else TypeError)(
            f"{fn}: {name} must be a 1-d integer array [N] of bucket ids, got shape {ids.shape} "
            f"dtype {ids.dtype}{hint}")
    if ids.dtype == np.uint64 and ids.size and int(ids.max()) >= 2**63:
        raise ValueError(f"{fn}: {name} has values >= 2**63, which do not fit int64")
    return ids.astype(np.int64, copy=False)


def _radix(levels, depth: int, fn: str) -> int:
    """K_1 * ... * K_depth, checked to fit int64."""
    space = math.prod(levels[:depth])
    if space >= 2**63:
        raise ValueError(f"{fn}: depth={depth} packs {space} = prod(levels[:{depth}]) ids, "
                         f"which does not fit int64 (must be < 2**63); use a smaller depth")
    return space


# ----------------------------------------------------------------------------------------------
# Grouping core

def _pack(codes: np.ndarray, depth: int, levels) -> np.ndarray:
    """Unchecked packing of codes[:, :depth] -> int64 [N]."""
    ids = codes[:, 0].astype(np.int64)
    for l in range(1, depth):
        ids *= levels[l]
        ids += codes[:, l]
    return ids


def _group(ids: np.ndarray, inverse: bool = True):
    """Occupied ids, their sizes, and each row's index into them.

    ids: int64 [N]. Returns (unique int64 [B] sorted, sizes int64 [B], inverse int64 [N] or None).
    """
    if ids.size == 0:
        e = np.zeros(0, np.int64)
        return e, e.copy(), (e.copy() if inverse else None)
    lo, hi = int(ids.min()), int(ids.max())
    limit = min(_BINCOUNT_MAX, max(1 << 16, 8 * ids.size))  # counts stay small next to ids
    if hi - lo < limit:
        shifted = ids if 0 <= lo and hi < limit else ids - lo
        base = 0 if shifted is ids else lo
        counts = np.bincount(shifted)
        occ = np.flatnonzero(counts)
        uniq, sizes = occ + base, counts[occ]
        inv = None
        if inverse:
            lut = np.empty(counts.size, np.int64)
            lut[occ] = np.arange(occ.size)
            inv = lut[shifted]
        return uniq.astype(np.int64, copy=False), sizes.astype(np.int64, copy=False), inv
    if not inverse:
        s = np.sort(ids)
        starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
        return s[starts], np.diff(np.r_[starts, s.size]).astype(np.int64), None
    order = np.argsort(ids, kind="stable")
    s = ids[order]
    new = np.r_[True, s[1:] != s[:-1]]
    starts = np.flatnonzero(new)
    inv = np.empty(ids.size, np.int64)
    inv[order] = np.cumsum(new) - 1
    return s[starts], np.diff(np.r_[starts, s.size]).astype(np.int64), inv


def _size_stats(sizes: np.ndarray, small: int) -> dict:
    """Distribution of bucket sizes (one observation per occupied bucket)."""
    if sizes.size == 0:
        nan = float("nan")
        return dict(n_buckets=0, median=nan, mean=nan, p10=nan, p25=nan, p75=nan, p90=nan,
                    min=0, max=0, share_below=nan)
    p10, p25, med, p75, p90 = np.quantile(sizes, [0.1, 0.25, 0.5, 0.75, 0.9])
    return dict(n_buckets=int(sizes.size), median=float(med), mean=float(sizes.mean()),
                p10=float(p10), p25=float(p25), p75=float(p75), p90=float(p90),
                min=int(sizes.min()), max=int(sizes.max()),
                share_below=float(np.count_nonzero(sizes < small) / sizes.size))


def _doc_weighted(sizes: np.ndarray, weights: np.ndarray | None = None, prefix: str = "doc_") -> dict:
    """The pool a random document falls in: quantiles p10, median, p90 of its bucket's size, one observation
    per document (``weights`` documents per bucket; default: the bucket's size), i.e. ``np.quantile`` of
    ``np.repeat(sizes, weights)`` with method="inverted_cdf", without materializing the repeat."""
    weights = sizes if weights is None else weights
    total = float(weights.sum())
    if total <= 0:
        nan = float("nan")
        return {f"{prefix}p10": nan, f"{prefix}median": nan, f"{prefix}p90": nan}
    order = np.argsort(sizes, kind="stable")
    s, cum = sizes[order], np.cumsum(weights[order].astype(np.float64))
    pick = lambda q: float(s[min(int(np.searchsorted(cum, q * total, side="left")), s.size - 1)])  # noqa: E731
    return {f"{prefix}p10": pick(0.1), f"{prefix}median": pick(0.5), f"{prefix}p90": pick(0.9)}


def depth_name(depth: int) -> str:
    """Conventional name of a depth: 1 -> "L1", 2 -> "L12", 3 -> "L123"."""
    return "L" + "".join(str(i) for i in range(1, depth + 1))


# ----------------------------------------------------------------------------------------------
# Public API

def bucket_ids(codes, depth: int, levels=None) -> np.ndarray:
    """Packed bucket id of each document's code prefix of length ``depth``.

    codes: integer [N, L] (numpy or torch), 0 <= codes[:, l] < K_l.
    depth: 1..L (1-based prefix length).
    levels: (K_1, ..., K_L), an object with ``.levels``, or None for 256 per level.
    Returns int64 [N]: ``((c1 * K2 + c2) * K3 + c3) ... + c_depth``, in [0, K_1 * ... * K_depth).
    Raises ValueError when K_1 * ... * K_depth >= 2**63.
    """
    fn = "bucket_ids"
    codes, levels = _check_codes(codes, levels, fn)
    depth = _check_depth(depth, codes.shape[1], fn)
    _radix(levels, depth, fn)
    return _pack(codes, depth, levels)


def all_bucket_ids(codes, levels=None) -> np.ndarray:
    """Packed bucket ids at every depth.

    codes: integer [N, L]; levels as in ``bucket_ids``.
    Returns int64 [N, L]; column D-1 equals ``bucket_ids(codes, D, levels)``.
    """
    fn = "all_bucket_ids"
    codes, levels = _check_codes(codes, levels, fn)
    n, L = codes.shape
    _radix(levels, L, fn)
    out = np.empty((n, L), np.int64)
    out[:, 0] = codes[:, 0]
    for l in range(1, L):
        np.multiply(out[:, l - 1], levels[l], out=out[:, l])
        out[:, l] += codes[:, l]
    return out


def unpack(ids, depth: int, levels=None) -> np.ndarray:
    """Inverse of ``bucket_ids``: packed ids at ``depth`` back to code prefixes.

    ids: integer [N] in [0, K_1 * ... * K_depth).
    levels: sequence of at least ``depth`` codebook sizes, an object with ``.levels``,
        or None for 256 per level.
    Returns int64 [N, depth].
    """
    fn = "unpack"
    ids = _check_ids(ids, fn)
    if levels is None:
        depth = check_int(fn, "depth", depth, lo=1)
        levels = (DEFAULT_K,) * depth
    else:
        levels = _resolve_levels(levels, None, fn)
        depth = _check_depth(depth, len(levels), fn)
    space = _radix(levels, depth, fn)
    if ids.size and (int(ids.min()) < 0 or int(ids.max()) >= space):
        row = int(np.flatnonzero((ids < 0) | (ids >= space))[0])
        raise ValueError(f"{fn}: ids[{row}] = {int(ids[row])} is outside [0, {space}) for "
                         f"depth={depth}, levels={levels[:depth]}")
    out = np.empty((ids.size, depth), np.int64)
    rest = ids.copy()
    for l in range(depth - 1, -1, -1):
        out[:, l] = rest % levels[l]
        rest //= levels[l]
    return out


def bucket_sizes(ids):
    """Occupied buckets and their document counts.

    ids: integer [N] packed bucket ids (any depth).
    Returns (unique_ids int64 [B] ascending, sizes int64 [B]), B = number of occupied buckets.
    """
    uniq, sizes, _ = _group(_check_ids(ids, "bucket_sizes"), inverse=False)
    return uniq, sizes


def occupied(ids) -> np.ndarray:
    """Occupied bucket ids, ascending. ids: integer [N]. Returns int64 [B]."""
    return _group(_check_ids(ids, "occupied"), inverse=False)[0]


def pool_sizes(codes, levels=None, depth: int = 1, small: int = 30) -> dict:
    """Pool-size statistics of the occupied buckets at ``depth``.

    codes: integer [N, L]; levels as in ``bucket_ids``; depth: 1..L.
    small: buckets with fewer than ``small`` documents count towards ``share_below``.
    Returns a dict: depth, name ("L12"), n_docs, n_buckets (occupied), nominal (K_1*...*K_depth),
    and over the occupied buckets' sizes (one observation per bucket): median, mean,
    p10, p25, p75, p90 (``np.quantile``, linear), min, max, and share_below (fraction of
    occupied buckets with size < small); and document-weighted, the size of the bucket a random
    document falls in (one observation per document, as the paper's "median pool"): doc_p10,
    doc_median, doc_p90 (inverted-CDF quantiles). Size statistics are NaN when N = 0.
    """
    fn = "pool_sizes"
    codes, levels = _check_codes(codes, levels, fn)
    depth = _check_depth(depth, codes.shape[1], fn)
    small = check_int(fn, "small", small, lo=0)
    nominal = _radix(levels, depth, fn)
    _, sizes, _ = _group(_pack(codes, depth, levels), inverse=False)
    return dict(depth=depth, name=depth_name(depth), n_docs=int(codes.shape[0]), nominal=nominal,
                **_size_stats(sizes, small), **_doc_weighted(sizes))


def children(codes, levels=None, depth: int = 2):
    """Parent -> children index (CSR) between occupied buckets at ``depth - 1`` and ``depth``.

    codes: integer [N, L]; levels as in ``bucket_ids``; depth: 1..L.
    Returns (parent_ids int64 [P], child_ids int64 [C], offsets int64 [P + 1]): the occupied
    children of parent_ids[i] are child_ids[offsets[i]:offsets[i + 1]], all ids ascending.
    Parents are packed ids at depth - 1; at depth 1 the single parent is the root, id 0.
    """
    fn = "children"
    codes, levels = _check_codes(codes, levels, fn)
    depth = _check_depth(depth, codes.shape[1], fn)
    _radix(levels, depth, fn)
    child = _group(_pack(codes, depth, levels), inverse=False)[0]
    return _csr(child, levels[depth - 1])


def _csr(child: np.ndarray, k_last: int):
    """CSR index from ascending child ids; parent = child // k_last."""
    par = child // k_last
    new = np.r_[True, par[1:] != par[:-1]] if par.size else np.zeros(0, bool)
    starts = np.flatnonzero(new)
    offsets = np.r_[starts, child.size].astype(np.int64)
    return par[starts], child, offsets


def summary_table(codes, levels=None, small: int = 30, *, quality=None, p: float = 0.3) -> list:
    """One row of pool-size statistics per depth 1..L.

    codes: integer [N, L]; levels as in ``bucket_ids``.
    Returns a list of L dicts: the ``pool_sizes`` keys plus ``occupancy`` (n_buckets / nominal)
    and ``children_mean`` (mean number of occupied children per occupied parent at depth - 1).
    quality: float [N] scores (optional): then also the eligible pool under quality top-p, as
    ``hermes.mix``'s stage2="quality" keeps it (documents >= the (1 - p) quantile of their bucket):
    ``eligible`` (documents kept), per bucket ``elig_p10``, ``elig_median``, ``elig_p90`` (linear
    quantiles over occupied buckets) and, per kept document, ``elig_doc_p10``, ``elig_doc_median``,
    ``elig_doc_p90`` (the eligible pool a random kept document falls in).
    """
    fn = "summary_table"
    codes, levels = _check_codes(codes, levels, fn)
    small = check_int(fn, "small", small, lo=0)
    q = None
    if quality is not None:
        from .mix import _check_p, _check_vector

        q = _check_vector(quality, codes.shape[0], fn, "quality")
        p = _check_p(p, fn)
    rows, ids = [], None
    for depth in range(1, codes.shape[1] + 1):
        nominal = _radix(levels, depth, fn)
        if ids is None:
            ids = codes[:, 0].astype(np.int64)
        else:
            ids *= levels[depth - 1]
            ids += codes[:, depth - 1]
        uniq, sizes, inv = _group(ids, inverse=q is not None)
        n_par = _csr(uniq, levels[depth - 1])[0].size
        row = dict(depth=depth, name=depth_name(depth), n_docs=int(codes.shape[0]),
                   nominal=nominal, **_size_stats(sizes, small), **_doc_weighted(sizes))
        if q is not None:
            from .mix import _eligible_top

            elig = _eligible_top(q, inv, sizes, p) if q.size else np.zeros(0, bool)
            pool = np.bincount(inv[elig], minlength=sizes.size)
            row["eligible"] = int(elig.sum())
            qs = np.quantile(pool, [0.1, 0.5, 0.9]) if pool.size else [float("nan")] * 3
            row.update(elig_p10=float(qs[0]), elig_median=float(qs[1]), elig_p90=float(qs[2]))
            row.update(_doc_weighted(pool, pool, prefix="elig_doc_"))
        row["occupancy"] = row["n_buckets"] / nominal
        row["children_mean"] = row["n_buckets"] / n_par if n_par else float("nan")
        rows.append(row)
    return rows


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, (float, np.floating)):
        return f"{float(v):.6g}"
    return str(v)


def format_table(rows, columns=None) -> str:
    """Plain-text table of dict rows (e.g. from ``summary_table``).

    rows: list of dicts; columns: keys to show, default the first row's keys (missing -> "-").
    Floats are shown with 6 significant digits; numbers right-aligned, text left-aligned.
    """
    rows = list(rows)
    if not rows:
        return "(no rows)"
    columns = list(columns or rows[0].keys())
    cells = [[_fmt(r.get(c)) for c in columns] for r in rows]
    numeric = [all(isinstance(r.get(c), (int, float, np.number)) for r in rows) for c in columns]
    widths = [max(len(c), *(len(row[j]) for row in cells)) for j, c in enumerate(columns)]
    just = lambda s, j: s.rjust(widths[j]) if numeric[j] else s.ljust(widths[j])  # noqa: E731
    lines = ["  ".join(just(c, j) for j, c in enumerate(columns))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(just(s, j) for j, s in enumerate(row)) for row in cells]
    return "\n".join(lines)
