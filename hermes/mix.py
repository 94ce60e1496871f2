"""Mix: the two-stage data mixture over buckets, computed exactly, and sampling from it.

The probability of document x is

    P(x) = w_{b1} * pi_{b1}(B) * rho_B(x)

where b1 is x's L1 bucket (c1) and B its sub-bucket at ``depth`` (its packed code prefix).

Stage 1, ``w`` over the occupied L1 buckets (``stage1``):
    "uniform"       w = 1 / (number of occupied L1 buckets);
    "proportional"  w = n_b1 / N;
    tau (float > 0) w proportional to n_b1 ** (1 / tau): tau = 1 is proportional, tau = inf
                    is uniform, tau < 1 sharpens towards the largest buckets;
    a mapping {bucket: weight}, or a path to a .json file {"bucket": weight} or a .csv file with
                    header ``bucket,weight`` (e.g. DoReMi output). Buckets are L1 ids (c1).
                    Every bucket named must be occupied; occupied buckets the source leaves out
                    get weight 0 (with a warning). Weights must be finite, >= 0, not all 0, and
                    are normalized to sum to 1.
Stage 2, inside each L1 bucket (``stage2``):
    "coverage"  pi = 1 / (number of occupied sub-buckets of b1); rho = 1 / n_B (max-entropy);
    "quality"   pi = n_B / n_b1; only documents whose quality is >= the (1 - p) quantile of
                quality within B are eligible (``np.quantile(q_B, 1 - p, method="linear")``,
                capped at max(q_B), so each sub-bucket's best document is always eligible);
                rho = 1 / (eligible documents of B), 0 for the others;
    "random"    pi * rho = 1 / n_b1: uniform over the documents of b1 (B is ignored).
At depth 1 the sub-bucket is the L1 bucket itself: "coverage" equals "random" and "quality"
keeps the top p of each L1 bucket.
"""
from __future__ import annotations

import csv
import json
import math
import numbers
import os
import re
import warnings
from collections.abc import Mapping

import numpy as np

from . import buckets as _b
from ._validate import check_int, check_seed

__all__ = ["STAGE2_RULES", "stage1_weights", "probabilities", "sample"]

STAGE2_RULES = ("coverage", "quality", "random")


# ----------------------------------------------------------------------------------------------
# Stage 1

_BUCKET_KEY = re.compile(r"[0-9]+", re.ASCII)
_CSV_NUMBER = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?|[+-]?(inf|infinity|nan)", re.ASCII | re.I)


def _no_duplicate_keys(src: str, fn: str):
    def hook(pairs):
        seen = {}
        for k, v in pairs:
            if k in seen:
                raise ValueError(f"{fn}: {src} gives key {k!r} twice (values {seen[k]!r} and {v!r})")
            seen[k] = v
        return seen

    return hook


def _read_weights(stage1, fn: str):
    """[(bucket key as written, weight as written, where)] and a name for messages, from a mapping or a file."""
    if isinstance(stage1, Mapping):
        return [(k, v, f"key {k!r}") for k, v in stage1.items()], "stage1 mapping"
    path = os.fspath(stage1)
    src = f"stage1 file {path!r}"
    ext = os.path.splitext(path)[1].lower()
    if ext not in (".json", ".csv"):
        raise ValueError(f"{fn}: {src} must end in .json or .csv")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{fn}: {src} does not exist")
    with open(path, newline="") as f:
        if ext == ".json":
            try:
                table = json.load(f, object_pairs_hook=_no_duplicate_keys(src, fn))
            except json.JSONDecodeError as e:
                raise ValueError(f"{fn}: {src} is not valid JSON: {e}") from None
            if not isinstance(table, dict):
                raise ValueError(f"{fn}: {src} must hold a JSON object {{\"bucket\": weight}}, "
                                 f"got {type(table).__name__}")
            for k, v in table.items():
                if isinstance(v, bool) or not isinstance(v, (int, float)):
                    raise ValueError(f"{fn}: {src}: key {k!r} has the weight {json.dumps(v)}; weights are JSON "
                                     f"numbers")
            return [(k, v, f"key {k!r}") for k, v in table.items()], src
        reader = csv.DictReader(f)
        if not reader.fieldnames or not {"bucket", "weight"} <= {h.strip() for h in reader.fieldnames}:
            raise ValueError(f"{fn}: {src} must have a header 'bucket,weight', got "
                             f"{reader.fieldnames}")
        table = []
        for row in reader:
            line = reader.line_num
            if None in row or any(v is None for v in row.values()):
                raise ValueError(f"{fn}: {src} line {line} has {'more' if None in row else 'fewer'} fields than "
                                 f"the header")
            row = {k.strip(): v for k, v in row.items()}
            weight = row["weight"].strip()
            if not _CSV_NUMBER.fullmatch(weight):
                raise ValueError(f"{fn}: {src} line {line}: weight {row['weight']!r} is not a number")
            table.append((row["bucket"].strip(), float(weight), f"line {line}"))
        return table, src


def _weights_from_table(table: list, src: str, l1_ids: np.ndarray, fn: str) -> np.ndarray:
    occupied = {int(b): i for i, b in enumerate(l1_ids)}
    w = np.zeros(l1_ids.size)
    given: dict = {}
    unknown = []
    for key, value, where in table:
        if isinstance(key, (bool, np.bool_)):
            b = None
        elif isinstance(key, numbers.Integral):
            b = int(key)
        else:
            b = int(key) if isinstance(key, str) and _BUCKET_KEY.fullmatch(key) else None  # not '+1', '1.0', '1_0'
        if b is not None and b in given:
            raise ValueError(f"{fn}: {src}: {given[b]} and {where} both name bucket {b}")
        if b is None or b not in occupied:
            unknown.append(key)
            continue
        given[b] = where
        if isinstance(value, (bool, np.bool_)):
            raise ValueError(f"{fn}: {src} gives bucket {key} the non-numeric weight {value!r}")
        try:
            w[occupied[b]] = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"{fn}: {src} gives bucket {key} the non-numeric weight {value!r}") \
                from None
    if unknown:
        raise ValueError(f"{fn}: {src} names {len(unknown)} bucket(s) that are not occupied L1 "
                         f"buckets, e.g. {unknown[:5]}; buckets are L1 ids c1 of the codes, written in digits")
    missing = [int(b) for b in l1_ids if int(b) not in given]
    if missing:
        warnings.warn(f"{fn}: {src} has no weight for {len(missing)} occupied L1 bucket(s), e.g. "
                      f"{missing[:5]}; they get weight 0", stacklevel=3)
    return w


def _stage1(stage1, l1_ids: np.ndarray, l1_sizes: np.ndarray, fn: str) -> np.ndarray:
    """Normalized weights float64 [B1] over the occupied L1 buckets ``l1_ids``."""
    if isinstance(stage1, str) and stage1 in ("uniform", "proportional"):
        w = np.ones(l1_ids.size) if stage1 == "uniform" else l1_sizes.astype(np.float64)
    elif isinstance(stage1, numbers.Real) and not isinstance(stage1, (bool, np.bool_)):
        tau = float(stage1)
        if not tau > 0:
            raise ValueError(f"{fn}: stage1 temperature must be > 0 (inf = uniform), got {stage1}")
        logw = np.log(l1_sizes.astype(np.float64)) / tau
        w = np.exp(logw - logw.max()) if logw.size else logw
    elif isinstance(stage1, (Mapping, str, os.PathLike)):
        if isinstance(stage1, str) and os.path.splitext(stage1)[1].lower() not in (".json", ".csv"):
            raise ValueError(f"{fn}: stage1 must be 'uniform', 'proportional', a temperature > 0, "
                             f"a mapping or a .json/.csv path, got {stage1!r}")
        w = _weights_from_table(*_read_weights(stage1, fn), l1_ids, fn)
        src = "stage1" if isinstance(stage1, Mapping) else f"stage1 file {os.fspath(stage1)!r}"
        bad = np.flatnonzero(~np.isfinite(w) | (w < 0))
        if bad.size:
            raise ValueError(f"{fn}: {src} weights must be finite and >= 0; bucket "
                             f"{int(l1_ids[bad[0]])} has {w[bad[0]]}")
        if l1_ids.size and w.sum() <= 0:
            raise ValueError(f"{fn}: {src} gives every occupied L1 bucket weight 0")
    else:
        raise TypeError(f"{fn}: stage1 must be 'uniform', 'proportional', a temperature > 0, a "
                        f"mapping or a .json/.csv path, got {type(stage1).__name__}")
    return w / w.sum() if w.size else w


def stage1_weights(codes, levels=None, stage1="uniform"):
    """Stage-1 weights over the occupied L1 buckets.

    codes: integer [N, L]; levels as in ``hermes.buckets.bucket_ids``;
    stage1: "uniform", "proportional", a temperature tau > 0, a mapping, or a .json/.csv path
        (see the module docstring).
    Returns (bucket_ids int64 [B1] ascending, weights float64 [B1] summing to 1), B1 = number of
    occupied L1 buckets.
    """
    fn = "stage1_weights"
    codes, levels = _b._check_codes(codes, levels, fn)
    l1_ids, l1_sizes, _ = _b._group(codes[:, 0].astype(np.int64), inverse=False)
    return l1_ids, _stage1(stage1, l1_ids, l1_sizes, fn)


# ----------------------------------------------------------------------------------------------
# The mixture

class _Mixture:
    """Everything the mixture knows about the corpus; arrays indexed by document or group.

    l1_inv [N]: index of each doc's L1 bucket in l1_ids [B1] (sizes n1 [B1], weights w [B1]);
    sub_inv [N]: index of each doc's sub-bucket in sub_ids [S] (sizes sub_size [S],
    parent index sub_l1 [S], eligible counts sub_elig [S], mass sub_mass [S]);
    prob [N] = P(x); group_inv [N] / group_mass [G] / group_cap [G]: the groups within which
    documents are uniform (sub-buckets, or L1 buckets for "random").
    """


def _check_vector(v, n, fn: str, name: str, integer_ok=True) -> np.ndarray:
    v = _b._to_numpy(v)
    if v.ndim != 1 or v.shape[0] != n:
        raise ValueError(f"{fn}: {name} must be a 1-d array [N] with N = {n} (one per code row), "
                         f"got shape {v.shape}")
    if not (np.issubdtype(v.dtype, np.floating) or (integer_ok and np.issubdtype(v.dtype, np.integer))):
        raise TypeError(f"{fn}: {name} must be a numeric array, got dtype {v.dtype}")
    v = v.astype(np.float64, copy=False)
    bad = np.flatnonzero(~np.isfinite(v))
    if bad.size:
        raise ValueError(f"{fn}: {name} must be finite; row {int(bad[0])} is {v[bad[0]]}")
    return v


def _check_p(p, fn: str) -> float:
    if isinstance(p, (bool, np.bool_)) or not isinstance(p, numbers.Real) or not 0 < p <= 1:
        raise ValueError(f"{fn}: p must be a fraction in (0, 1], got {p!r}")
    return float(p)


def _eligible_top(q: np.ndarray, sub_inv: np.ndarray, sub_size: np.ndarray, p: float) -> np.ndarray:
    """Mask [N]: q >= the (1 - p) quantile of q within the doc's sub-bucket (numpy "linear")."""
    order = np.lexsort((q, sub_inv))
    qs = q[order]
    start = np.r_[0, np.cumsum(sub_size)[:-1]]
    # np.quantile's "linear" method, written out per group so thresholds match it bit for bit.
    vi = (sub_size - 1) * (1.0 - p)
    prev = np.floor(vi).astype(np.int64)
    nxt = np.minimum(prev + 1, sub_size - 1)
    t = vi - prev
    a, b = qs[start + prev], qs[start + nxt]
    diff = b - a
    thr = np.where(t >= 0.5, b - diff * (1 - t), a + diff * t)
    thr = np.minimum(thr, qs[start + sub_size - 1])  # the max is always eligible
    elig = np.empty(q.size, bool)
    elig[order] = qs >= np.repeat(thr, sub_size)
    return elig


def _mixture(fn, codes, levels, depth, stage1, stage2, quality, p) -> _Mixture:
    codes, levels = _b._check_codes(codes, levels, fn)
    n, L = codes.shape
    depth = _b._check_depth(depth, L, fn)
    _b._radix(levels, depth, fn)
    if not isinstance(stage2, str) or stage2 not in STAGE2_RULES:
        raise ValueError(f"{fn}: stage2 must be one of {STAGE2_RULES}, got {stage2!r}")
    m = _Mixture()
    m.n, m.depth, m.stage2 = n, depth, stage2
    m.l1_ids, m.n1, m.l1_inv = _b._group(codes[:, 0].astype(np.int64))
    m.w = _stage1(stage1, m.l1_ids, m.n1, fn)
    m.sub_ids, m.sub_size, m.sub_inv = _b._group(_b._pack(codes, depth, levels))
    m.sub_l1 = np.searchsorted(m.l1_ids, m.sub_ids // math.prod(levels[1:depth]))
    n_children = np.bincount(m.sub_l1, minlength=m.l1_ids.size)
    w_doc = m.w[m.l1_inv]
    if stage2 == "quality":
        if quality is None:
            raise ValueError(f"{fn}: stage2='quality' needs quality scores [N], got quality=None")
        p = _check_p(p, fn)
        q = _check_vector(quality, n, fn, "quality")
        elig = _eligible_top(q, m.sub_inv, m.sub_size, p) if n else np.zeros(0, bool)
        m.sub_elig = np.bincount(m.sub_inv[elig], minlength=m.sub_ids.size)
        m.sub_mass = m.w[m.sub_l1] * m.sub_size / m.n1[m.sub_l1]
        m.prob = np.where(elig, w_doc * m.sub_size[m.sub_inv] / m.n1[m.l1_inv]
                          / np.maximum(m.sub_elig, 1)[m.sub_inv], 0.0)
    else:
        m.sub_elig = m.sub_size
        if stage2 == "coverage":
            m.sub_mass = m.w[m.sub_l1] / n_children[m.sub_l1]
            m.prob = w_doc / n_children[m.l1_inv] / m.sub_size[m.sub_inv]
        else:
            m.sub_mass = m.w[m.sub_l1] * m.sub_size / m.n1[m.sub_l1]
            m.prob = w_doc / m.n1[m.l1_inv]
    if stage2 == "random":
        m.group_inv, m.group_mass, m.group_cap = m.l1_inv, m.w, m.n1
        m.sub_group, m.group_l1 = m.sub_l1, np.arange(m.l1_ids.size)
    else:
        m.group_inv, m.group_mass, m.group_cap = m.sub_inv, m.sub_mass, m.sub_elig
        m.sub_group, m.group_l1 = np.arange(m.sub_ids.size), m.sub_l1
    return m


def probabilities(codes, levels=None, *, depth: int = 2, stage1="uniform", stage2="coverage",
                  quality=None, p: float = 0.3) -> np.ndarray:
    """P(x) = w_{b1} * pi_{b1}(B) * rho_B(x) for every document, exactly.

    codes: integer [N, L]; levels as in ``hermes.buckets.bucket_ids``; depth: 1..L, the depth of
    the sub-buckets B; stage1, stage2: the rules of the module docstring; quality: float [N]
    scores (needed by stage2="quality"; ignored otherwise); p: the kept top fraction in (0, 1].
    Returns float64 [N], non-negative, summing to 1 (up to rounding) when N > 0.
    """
    return _mixture("probabilities", codes, levels, depth, stage1, stage2, quality, p).prob


# ----------------------------------------------------------------------------------------------
# Sampling

def _waterfill(mass: np.ndarray, cap: np.ndarray, budget: float) -> np.ndarray:
    """Real allocation a [G] = min(lam * mass, cap) with sum(a) = budget (mass-0 groups get 0).

    Requires budget <= sum of cap over mass > 0. Groups saturate in order of cap / mass.
    """
    a = np.zeros(mass.size)
    pos = np.flatnonzero(mass > 0)
    if budget <= 0 or pos.size == 0:
        return a
    m, c = mass[pos], cap[pos].astype(np.float64)
    order = np.argsort(c / m, kind="stable")
    ms, cs = m[order], c[order]
    before = np.r_[0.0, np.cumsum(cs)[:-1]]            # capacity of the groups saturated first
    rest = np.cumsum(ms[::-1])[::-1]                  # mass of the groups not yet saturated
    j = np.searchsorted(before + cs / ms * rest, budget, side="left")
    if j >= pos.size:
        a[pos] = c
        return a
    lam = (budget - before[j]) / rest[j]
    a[pos] = np.minimum(lam * m, c)
    return a


def _seg_starts(seg: np.ndarray, n_seg: int) -> np.ndarray:
    """Start offsets [n_seg + 1] of the segments of a sorted segment array."""
    return np.r_[0, np.cumsum(np.bincount(seg, minlength=n_seg))]


def _seg_waterfill(seg, mass, cap, budget) -> np.ndarray:
    """Water-filling inside every segment: real a [G] = min(lam_s * mass_g, cap_g) with the sum of a over
    segment s equal to budget[s] (capped at the segment's capacity); mass-0 groups get 0.

    seg int64 [G] (any order), mass, cap [G], budget [S]. Groups saturate in order of cap / mass; all
    segments at once (one sort), as :func:`_waterfill` does for one.
    """
    a = np.zeros(mass.size)
    pos = np.flatnonzero(mass > 0)
    if pos.size == 0:
        return a
    n_seg = budget.size
    m, c, sg = mass[pos], cap[pos].astype(np.float64), seg[pos]
    order = np.lexsort((c / m, sg))
    m, c, sg, pos = m[order], c[order], sg[order], pos[order]
    start = _seg_starts(sg, n_seg)
    first = start[sg]
    cum_c = np.cumsum(c)
    before = cum_c - c - (cum_c[first] - c[first])       # capacity of the segment's groups saturated first
    cum_m = np.cumsum(m[::-1])[::-1]
    end = start[sg + 1]
    rest = cum_m - np.r_[cum_m, 0.0][end]                 # mass of the segment's groups not yet saturated
    reach = before + c / m * rest                         # budget at which group j saturates (sorted in j)
    hit = reach >= budget[sg]
    idx = np.where(hit, np.arange(pos.size), pos.size)
    j = np.minimum.reduceat(np.r_[idx, pos.size], start[:-1])  # first saturating-at-budget group per segment
    j = np.where(np.diff(start) > 0, j, pos.size)
    jj = j[sg]
    full = jj >= end                                      # the budget covers the segment's capacity
    safe = np.minimum(jj, pos.size - 1)
    lam = (budget[sg] - before[safe]) / rest[safe]
    a[pos] = np.where(full, c, np.minimum(lam * m, c))
    return a


def _seg_round(seg, real, cap, total, key) -> np.ndarray:
    """Integer counts int64 [G]: per segment s summing to total[s], each within one of real (largest
    remainder, ties by key) and at most cap. Requires the real counts of a segment to sum to total[s]."""
    base = np.minimum(np.floor(real + 1e-9), cap).astype(np.int64)
    extra = total - np.bincount(seg, weights=base, minlength=total.size).astype(np.int64)
    room = np.flatnonzero(base < cap)
    if room.size and extra.max(initial=0) > 0:
        order = room[np.lexsort((key[room], -(real[room] - base[room]), seg[room]))]
        so = seg[order]
        start = np.searchsorted(so, np.arange(total.size))
        rank = np.arange(order.size) - start[so]
        base[order[rank < extra[so]]] += 1
    return base


def _lexsort2(minor: np.ndarray, major: np.ndarray, n_major: int) -> np.ndarray:
    """``np.lexsort((minor, major))`` (ties by index), as two stable sorts: minor, then major in that order, with
    major as int16 when it fits (numpy's radix sort). 2-3x faster than lexsort on 10^7-10^8 rows."""
    o = np.argsort(minor, kind="stable")
    m = major[o].astype(np.int16 if n_major <= np.iinfo(np.int16).max else np.int64, copy=False)
    return o[np.argsort(m, kind="stable")]


class _Exact:
    """Sampling without replacement that keeps the Stage-1 shares, for any number of documents n.

    ``take(n)``: the L1 buckets get n water-filled by their weights w_b with their eligible documents as
    caps (so only an exhausted L1 bucket's share spills over the others, in proportion to their weights),
    rounded to integers by largest remainder; inside each L1 bucket its count is water-filled over its
    groups (sub-buckets; the bucket itself for "random") by their masses, so a saturated sub-bucket's
    excess goes to its siblings, and rounded the same way; each group gives its first documents of a
    uniform random order. Every L1 count is within one document of its target, every sub-bucket within
    two. Documents are returned in draw order: by (k + psi_b) / w_b, k the document's position in its
    L1 bucket's interleaved order (groups by (rank + phi_g) / mass_g), with random phases psi, phi.
    """

    def __init__(self, mix, elig, rng):
        self.mix, self.elig = mix, elig
        g = mix.group_inv[elig]
        G, b1 = mix.group_mass.size, mix.l1_ids.size
        rbits = 62 - max(1, int(G).bit_length())
        order = np.argsort((g << rbits) | rng.integers(0, 1 << rbits, size=elig.size, dtype=np.int64))
        sizes = np.bincount(g, minlength=G)
        self.rank = np.empty(elig.size, np.int64)  # position of each document in its group's random order
        self.rank[order] = np.arange(elig.size) - np.repeat(np.r_[0, np.cumsum(sizes)[:-1]], sizes)
        self.group, self.l1 = g, mix.l1_inv[elig]
        self.cap_g = sizes
        self.cap_1 = np.bincount(self.l1, minlength=b1)
        self.key_g, self.key_1 = rng.random(G), rng.random(b1)
        local = (self.rank + rng.random(G)[g]) / mix.group_mass[g]
        ol = _lexsort2(local, self.l1, b1)
        pos = np.empty(elig.size, np.int64)
        pos[ol] = np.arange(elig.size) - np.repeat(np.r_[0, np.cumsum(self.cap_1)[:-1]], self.cap_1)
        with np.errstate(divide="ignore"):
            self.time = (pos + rng.random(b1)[self.l1]) / mix.w[self.l1]

    def targets(self, n: float):
        """Real targets: (per L1 bucket [B1], per group [G]) for n documents."""
        mix = self.mix
        t1 = _waterfill(mix.w, self.cap_1, n)
        return t1, _seg_waterfill(mix.group_l1, mix.group_mass, self.cap_g, t1)

    def take(self, n: int) -> np.ndarray:
        """Positions (into elig) of the n documents, in draw order."""
        mix = self.mix
        t1 = _waterfill(mix.w, self.cap_1, n)
        c1 = _seg_round(np.zeros(t1.size, np.int64), t1, self.cap_1, np.array([n]), self.key_1)
        tg = _seg_waterfill(mix.group_l1, mix.group_mass, self.cap_g, c1.astype(np.float64))
        cg = _seg_round(mix.group_l1, tg, self.cap_g, c1, self.key_g)
        sel = np.flatnonzero(self.rank < cg[self.group])
        return sel[np.argsort(self.time[sel], kind="stable")]


def _check_budget(budget, by_tokens: bool, fn: str):
    if not by_tokens:
        return check_int(fn, "budget", budget, lo=0)
    if isinstance(budget, (bool, np.bool_)) or not isinstance(budget, numbers.Real) \
            or not math.isfinite(budget) or budget < 0:
        raise ValueError(f"{fn}: budget must be a finite number of tokens >= 0, got {budget!r}")
    return float(budget)


def sample(codes, budget, *, levels=None, depth: int = 2, stage1="uniform", stage2="coverage",
           quality=None, p: float = 0.3, tokens=None, replace: bool = False, seed=0):
    """Draw documents from the mixture P (see ``probabilities``).

    codes: integer [N, L]; budget: number of documents (int), or of tokens when ``tokens`` is
    given; levels, depth, stage1, stage2, quality, p: as in ``probabilities``; tokens: [N]
    non-negative token counts or None; replace: draw with replacement; seed: int or
    np.random.Generator (same seed, same draw).

    With replacement: i.i.d. draws from P (inverse CDF). With a token budget, draws continue
    until the drawn tokens reach ``budget``: the draw that reaches it is kept, none after it.
    Without replacement the Stage-1 shares are kept: the n documents are water-filled over the L1
    buckets by their weights w_b, with each bucket's eligible documents as its cap, so an L1 bucket
    gets min(lam * w_b, pool_b) and only a bucket whose documents run out passes its excess to the
    other L1 buckets (in proportion to their weights). Inside an L1 bucket its count is water-filled
    over its groups (the sub-buckets B by their mass; the bucket itself for "random"), so a saturated
    sub-bucket's excess goes first to its siblings. Counts are rounded by largest remainder: every L1
    count is within one document of its target (of n * w_b whenever every L1 bucket can supply it),
    every sub-bucket within two. Documents are drawn uniformly without replacement inside each group
    and returned interleaved over the buckets (draw order by (position in the bucket + phase) / w_b).
    With ``tokens`` the sample is the smallest such n-document sample whose tokens reach ``budget``
    (the document that tips it over is drawn last and may overshoot it); P weighs documents, so the
    L1 document counts keep the Stage-1 shares and the token shares follow document lengths. A budget
    above the pool (documents, or tokens, with P > 0) raises ValueError.

    Returns (indices int64 [n] in draw order, plan), plan a dict of arrays [S], one entry per
    occupied sub-bucket at ``depth``: "l1" (its L1 bucket c1), "bucket" (packed id), "size",
    "eligible" (documents stage 2 may draw: those passing the quality filter, else all),
    "mass" (sum of P over it), "expected" (n * mass, the expected documents for the n drawn),
    "target" (the water-filled share of the n documents without replacement; equals expected
    with replacement), "drawn" (documents drawn, with multiplicity), with ``tokens`` also
    "tokens" (tokens drawn), and the sub-bucket's L1 bucket's figures, repeated on each of its
    rows: "l1_weight" (w_b), "l1_eligible" (its pool), "l1_target" (its water-filled share of the
    n documents; n * w_b with replacement), "l1_drawn" and "l1_exhausted" (every eligible
    document of the bucket drawn; never with replacement).
    """
    fn = "sample"
    seed = check_seed(fn, seed, generator_ok=True)
    mix = _mixture(fn, codes, levels, depth, stage1, stage2, quality, p)
    by_tokens = tokens is not None
    budget = _check_budget(budget, by_tokens, fn)
    tok = _check_vector(tokens, mix.n, fn, "tokens") if by_tokens else None
    if by_tokens and (tok < 0).any():
        row = int(np.flatnonzero(tok < 0)[0])
        raise ValueError(f"{fn}: tokens must be >= 0; row {row} is {tok[row]}")
    rng = np.random.default_rng(seed)
    prob = mix.prob
    unit = "tokens" if by_tokens else "documents"
    if replace:
        pool = float(prob @ tok) if by_tokens else float(mix.n)
        if budget > 0 and pool <= 0:
            raise ValueError(f"{fn}: budget={budget} {unit} cannot be met: the documents with "
                             f"P > 0 hold 0 {unit}")
        idx = _draw_replace(prob, budget, tok, rng)
    else:
        elig = np.flatnonzero(prob > 0)
        pool = float(tok[elig].sum()) if by_tokens else elig.size
        if budget > pool:
            raise ValueError(f"{fn}: budget={budget} exceeds the pool of {pool:g} {unit} with "
                             f"P > 0 (stage2={stage2!r}); lower budget or use replace=True")
        idx = _draw_merge(mix, elig, budget, tok, rng)
    return idx, _plan(mix, idx, tok, replace)


def _draw_replace(prob, budget, tok, rng) -> np.ndarray:
    cdf = np.cumsum(prob)
    if cdf.size == 0 or budget == 0:
        return np.zeros(0, np.int64)
    cdf /= cdf[-1]
    draw = lambda m: np.minimum(np.searchsorted(cdf, rng.random(m), side="right"),  # noqa: E731
                                cdf.size - 1).astype(np.int64)
    if tok is None:
        return draw(budget)
    per_draw, parts, total = float(prob @ tok), [], 0.0
    while True:  # batches sized to the expected number of draws; a few at most
        m = int(min(1 << 24, math.ceil((budget - total) / per_draw * 1.05) + 16))
        idx = draw(m)
        reached = total + np.cumsum(tok[idx])
        stop = int(np.searchsorted(reached, budget, side="left"))
        if stop < m:
            parts.append(idx[:stop + 1])
            return np.concatenate(parts)
        parts.append(idx)
        total = float(reached[-1])


def _draw_merge(mix, elig, budget, tok, rng) -> np.ndarray:
    """Without replacement (see :class:`_Exact`): a document budget takes ``take(budget)``; a token budget
    the smallest n whose ``take(n)`` holds ``budget`` tokens (bisection), the documents of ``take(n - 1)``
    first, cut at the document that tips it over, drawn last."""
    if budget == 0 or elig.size == 0:
        return np.zeros(0, np.int64)
    ex = _Exact(mix, elig, rng)
    if tok is None:
        return elig[ex.take(budget)]
    t = tok[elig]
    lo, hi = 0, elig.size  # tokens(take(lo)) < budget <= tokens(take(hi))
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if t[ex.take(mid)].sum() >= budget:
            hi = mid
        else:
            lo = mid
    sel, prev = ex.take(hi), ex.take(lo)
    new = ~np.isin(sel, prev)
    order = np.concatenate([sel[~new], sel[new]])
    # take(lo + 1) can differ from take(lo) by more than one document (the rounding moves a document between
    # sub-buckets), so cut at the first document whose tokens reach the budget: it is drawn last. The cut falls
    # among the new documents, since those of take(lo) hold fewer tokens than the budget.
    stop = int(np.searchsorted(np.cumsum(t[order]), budget, side="left"))
    return elig[order[:stop + 1]]


def _within_l1_waterfill(mix, l1_share: np.ndarray) -> np.ndarray:
    """Real shares [G] of the groups: each L1 bucket's share water-filled over its own groups."""
    return _seg_waterfill(mix.group_l1, mix.group_mass, mix.group_cap, l1_share)


def _plan(mix, idx, tok, replace) -> dict:
    s = mix.sub_ids.size
    drawn = np.bincount(mix.sub_inv[idx], minlength=s)
    expected = idx.size * mix.sub_mass
    l1_cap = np.bincount(mix.l1_inv[mix.prob > 0], minlength=mix.l1_ids.size)
    l1_drawn = np.bincount(mix.l1_inv[idx], minlength=mix.l1_ids.size)
    if replace:
        target = expected
        l1_target = idx.size * mix.w
        l1_exhausted = np.zeros(mix.l1_ids.size, bool)
    else:  # L1 shares water-filled over the L1 buckets, then over the groups inside each
        l1_target = _waterfill(mix.w, l1_cap, idx.size)
        share = _within_l1_waterfill(mix, l1_target)
        target = share[mix.sub_group] * mix.sub_elig / mix.group_cap[mix.sub_group]
        l1_exhausted = (l1_drawn >= l1_cap) & (l1_cap > 0) & (mix.w > 0)
    plan = {"l1": mix.l1_ids[mix.sub_l1], "bucket": mix.sub_ids, "size": mix.sub_size,
            "eligible": mix.sub_elig, "mass": mix.sub_mass, "expected": expected,
            "target": target, "drawn": drawn,
            "l1_weight": mix.w[mix.sub_l1], "l1_eligible": l1_cap[mix.sub_l1],
            "l1_target": l1_target[mix.sub_l1], "l1_drawn": l1_drawn[mix.sub_l1],
            "l1_exhausted": l1_exhausted[mix.sub_l1]}
    if tok is not None:
        plan["tokens"] = np.bincount(mix.sub_inv[idx], weights=tok[idx], minlength=s)
    return plan
