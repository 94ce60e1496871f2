"""k-means on hermes's assignment kernels: k-means++ init, Lloyd iterations (streamed, spherical or L2),
the public :func:`hermes.kmeans`, and residual k-means (stage-by-stage k-means on RVQ residuals)."""
from __future__ import annotations

import math

import numpy as np

from ._sources import _Mem, _Residuals, _Source, _rng, _torch
from ._validate import check_int, check_metric, describe, is_torch
from .model import MAX_CODEWORDS, Model, codeword_term

_KMEANS_BATCH = 16384
_WARMUP_STRIDE = 2  # warm-up iterations read every other row: a partition by direction needs fewer
_MEM_BATCH = 65536  # rows per GEMM when the rvq sample is in memory ([B, K] float32 scores: 64 MiB at K = 256)


# ------------------------------------------------------------------------------------------ k-means
class _Assigner:
    """Nearest-centroid codes against fixed centroids C [K, d], built once per Lloyd iteration.

    CPU: one torch GEMM per batch (scores x C^T) and hermes's argmax epilogue (``_C.argmax_levels``, the
    epilogue behind :func:`hermes.assign_codes`), with the centroid norms computed once, not per batch.
    Other devices: :func:`hermes.assign_codes` on a 1-level model (its GEMM + fused argmax kernels).
    """

    def __init__(self, C, metric: str):
        torch = _torch()
        self.C, self.metric, self.K = C, metric, int(C.shape[0])
        if C.device.type == "cpu":
            from ._backend import _C

            self._C = _C
            self.cterm = np.ascontiguousarray(codeword_term(C.double(), metric).numpy(), dtype=np.float32)
            self.Ct = C.T.contiguous()
            self.nt = max(1, torch.get_num_threads())
            self.tables = _C.Tables([self.K], _C.METRIC_L2 if metric == "l2" else _C.METRIC_COS, False, 0.0,
                                    m=self.Ct, cterm=self.cterm)
        else:
            self.model = Model([C.detach().cpu().numpy()], metric=metric, normalize=False)

    def __call__(self, xb):
        """Codes [B] int64 of the rows xb [B, d] (on C's device)."""
        from .assign import assign_codes

        torch = _torch()
        if xb.device.type != "cpu":
            return assign_codes(xb.contiguous(), self.model)[:, 0].long()
        g = torch.mm(xb, self.Ct)
        codes = np.empty((g.shape[0], 1), dtype=np.int32)
        self._C.argmax_levels(g, xb, self.tables, None, codes, nthreads=self.nt)
        return torch.from_numpy(codes[:, 0].astype(np.int64))


def _assign(xb, C, metric: str):
    """Codes [B] (int64) of the rows xb [B, d] against centroids C [K, d] (see :class:`_Assigner`)."""
    return _Assigner(C, metric)(xb)


def _row_error(xb, C, codes, metric: str):
    """Per-row error to the assigned centroid: ||x - c||^2 (l2) or 1 - cos(x, c) (cos)."""
    torch = _torch()
    c = C[codes]
    if metric == "l2":
        return ((xb - c) ** 2).sum(1)
    return 1.0 - torch.nn.functional.cosine_similarity(xb, c, dim=1, eps=1e-12)


def _kmeanspp(pts, k: int, metric: str, rng: np.random.Generator):
    """Greedy k-means++ (sklearn's variant: 2 + ln k local trials per centre) on in-memory pts [S, d]."""
    torch = _torch()
    if metric == "cos":
        pts = torch.nn.functional.normalize(pts, dim=1)
    p = pts.float()
    S = p.shape[0]
    sq = (p * p).sum(1)
    trials = 2 + int(math.log(k))
    first = int(rng.integers(S))
    idx = [first]
    closest = (sq + sq[first] - 2 * (p @ p[first])).clamp_min_(0)
    pot = float(closest.sum())
    for _ in range(1, k):
        if pot <= 0:  # every point coincides with a centre: fall back to uniform draws
            cand = torch.from_numpy(rng.integers(0, S, size=trials))
        else:
            u = torch.from_numpy(rng.random(trials) * pot)
            cand = torch.searchsorted(torch.cumsum(closest.double(), 0).cpu(), u).clamp_(max=S - 1)
        cand = cand.to(p.device)
        dc = (sq[cand, None] + sq[None, :] - 2 * (p[cand] @ p.T)).clamp_min_(0)
        dc = torch.minimum(dc, closest[None, :])
        pots = dc.double().sum(1)
        best = int(torch.argmin(pots))
        idx.append(int(cand[best]))
        closest, pot = dc[best], float(pots[best])
    return pts[torch.tensor(idx, device=pts.device)].clone()


def _kmeans_core(src, k: int, metric: str, iters: int, init, rng: np.random.Generator, batch: int,
                 bar=None, init_size: int | None = None, progressive: bool = False, warmup: int = 0):
    """Lloyd's k-means over a row source (streamed in batches). Returns centroids [k, d] float32.

    cos: centroids are normalized means (spherical k-means). Empty clusters are re-seeded with the
    rows farthest from their centroid (distinct rows), so no centroid stays dead.
    warmup (l2 only): the first ``warmup`` of the ``iters`` iterations assign each row to the centroid of
    largest cosine (its direction) instead of the nearest one, over every other row of each batch (half
    the GEMM work; as good on the bundled and synthetic data); centroids are plain means throughout.
    Residuals of an RVQ stage are spread around the origin with similar norms, where L2 Lloyd seeded
    with data rows collapses: the seed of smallest norm is nearest to most rows, and most other seeds
    keep only themselves. Assigning by direction first balances the clusters; L2 then refines them.
    progressive: iteration i < iters - 1 uses only the first max(32 k, N / 2^(iters-1-i)) rows (src must
    be in random order); the last iterations see every row. Most of the work, little of the quality.
    """
    torch = _torch()
    N, d, dev = src.N, src.d, src.device
    if isinstance(init, str):
        S = min(N, init_size or max(16 * k, 4096))
        sel = np.arange(N) if S == N else np.sort(rng.choice(N, size=S, replace=False))
        pts = src.rows(sel)
        if init == "k-means++":
            C = _kmeanspp(pts, k, metric, rng)
        else:  # "random"
            C = pts[torch.from_numpy(rng.choice(S, size=k, replace=False)).to(dev)].clone()
    else:
        C = init.to(device=dev, dtype=torch.float32).clone()
    if metric == "cos":
        C = torch.nn.functional.normalize(C, dim=1)
    for it in range(iters):
        n = min(N, max(32 * k, N >> (iters - 1 - it))) if progressive else N
        sums = torch.zeros((k, d), dtype=torch.float64, device=dev)
        counts = torch.zeros((k,), dtype=torch.float64, device=dev)
        assign = _Assigner(C, "cos" if it < warmup else metric)
        for lo in range(0, n, batch):
            xb = src.slice(lo, min(n, lo + batch))
            if it < warmup and _WARMUP_STRIDE > 1:
                xb = xb[::_WARMUP_STRIDE]
            codes = assign(xb)
            sums += torch.zeros((k, d), device=dev).index_add_(0, codes, xb).double()
            counts += torch.bincount(codes, minlength=k).double()
        newC = (sums / counts.clamp_min(1)[:, None]).float()
        empty = torch.nonzero(counts == 0).flatten()
        if empty.numel():  # rare: one more pass finds the rows farthest from their centroids
            newC[empty] = _farthest_rows(src, C, metric, int(empty.numel()), batch)
        C = torch.nn.functional.normalize(newC, dim=1) if metric == "cos" else newC
        if bar is not None:
            bar.set_postfix(empty=int(empty.numel()))
            bar.update(1)
    return C


def _farthest_rows(src, C, metric: str, n: int, batch: int):
    """The n distinct rows of src farthest from their assigned centroid in C (largest error first)."""
    torch = _torch()
    far_err = torch.empty(0, device=src.device)
    far_x = torch.empty((0, src.d), device=src.device)
    for lo in range(0, src.N, batch):
        xb = src.slice(lo, min(src.N, lo + batch))
        err = _row_error(xb, C, _assign(xb, C, metric), metric)
        top = torch.topk(err, min(n, err.shape[0])).indices
        far_err, far_x = torch.cat([far_err, err[top]]), torch.cat([far_x, xb[top]])
        if far_err.shape[0] > n:
            keep = torch.topk(far_err, n).indices
            far_err, far_x = far_err[keep], far_x[keep]
    order = torch.argsort(far_err, descending=True, stable=True)
    return far_x[order[:n]]


def _check_init(fn, init, k, d):
    if isinstance(init, str):
        if init not in ("k-means++", "random"):
            raise ValueError(f"{fn}: init must be 'k-means++', 'random' or a [k, d] array, got {init!r}")
        return init
    torch = _torch()
    a = init if is_torch(init) else torch.from_numpy(np.asarray(init, dtype=np.float32))
    if tuple(a.shape) != (k, d):
        raise ValueError(f"{fn}: init must be [k, d] = [{k}, {d}], got {describe(init)}")
    if not bool(torch.isfinite(a).all()):
        raise ValueError(f"{fn}: init contains NaN or Inf")
    return a


def kmeans(x, k: int, *, metric: str = "cos", iters: int = 10, init="k-means++", seed: int = 0,
           device=None, batch_size: int = _KMEANS_BATCH, init_size: int | None = None, progress: bool = False):
    """Lloyd's k-means whose assignment step runs on hermes's kernels (one GEMM + the argmax epilogue of
    :func:`hermes.assign_codes` per batch on the CPU; ``assign_codes`` on a 1-level model elsewhere).

    Args:
        x: ``[N, d]`` float numpy array (a memmap is streamed in batches), or torch tensor (CPU or CUDA).
        k: number of centroids (1 <= k <= min(N, 65,536)).
        metric: ``"cos"``: spherical k-means (assign by cosine; centroids are normalized means) or
            ``"l2"``: classic k-means (centroids are means).
        iters: Lloyd iterations (each is one pass over x).
        init: ``"k-means++"`` (greedy k-means++, as scikit-learn, on a random sample of ``init_size``
            rows), ``"random"`` (k distinct sample rows) or an initial ``[k, d]`` array.
        seed: seeds every random choice; the same seed, data and device give the same centroids
            (bit for bit on the CPU).
        device: where to compute (default: x's device; numpy input: CPU).
        batch_size: rows per assignment batch.
        init_size: rows sampled for the k-means++ seeding (default ``max(16 k, 4096)``, at most N).
        progress: show a tqdm bar over the iterations.

    Returns:
        centroids ``[k, d]`` float32: numpy for numpy input, torch on ``device`` for torch input.
        A cluster left empty by an iteration is re-seeded with the row farthest from its centroid.

    Raises:
        ValueError / TypeError naming the argument: bad x (not 2-d float, NaN/Inf rows), k not a
        positive integer or larger than N, bad metric, iters, init.
    """
    fn = "kmeans"
    torch = _torch()
    check_metric(fn, metric)
    seed = check_int(fn, "seed", seed, 0)
    src = _Source(fn, x, device)
    src.check_all()
    k = check_int(fn, "k", k, 1)
    iters = check_int(fn, "iters", iters, 0)
    batch_size = check_int(fn, "batch_size", batch_size, 1)
    if k > MAX_CODEWORDS:
        raise ValueError(f"{fn}: k = {k} is above the {MAX_CODEWORDS} codewords a level supports")
    if src.N < k:
        raise ValueError(f"{fn}: x has {src.N} rows, fewer than k = {k} centroids")
    init = _check_init(fn, init, k, src.d)
    if init_size is not None:
        init_size = check_int(fn, "init_size", init_size, k)
    from tqdm.auto import tqdm

    with torch.no_grad(), tqdm(total=iters, desc="kmeans", disable=not progress, leave=False) as bar:
        C = _kmeans_core(src, k, metric, iters, init, _rng(seed, 0), batch_size, bar, init_size)
    return C if src.torch_in else C.cpu().numpy()


# --------------------------------------------------------------------------------- residual k-means
def _stage_fit(res, K, metric, iters, init, rng, batch, bar, progressive=False, warmup=0):
    """One RVQ stage on residuals ``res``: k-means, then the final assignment with the fitted centroids.

    Returns (codeword [K, d], codes [N] int64, counts [K]). Under cos the codeword is the centroid
    direction scaled by the members' mean projection on it (the least-squares scale, > 0), so the
    cosine assignment is unchanged and subtracting it leaves the smallest residual.
    """
    torch = _torch()
    C = _kmeans_core(res, K, metric, iters, init, rng, batch, bar,
                     progressive=progressive and isinstance(res, _Mem), warmup=warmup)
    codes = torch.empty(res.N, dtype=torch.int64, device=res.device)
    assign = _Assigner(C, metric)
    proj = torch.zeros(K, dtype=torch.float64, device=res.device)
    counts = torch.zeros(K, dtype=torch.float64, device=res.device)
    for lo in range(0, res.N, batch):
        xb = res.slice(lo, min(res.N, lo + batch))
        c = assign(xb)
        codes[lo:lo + xb.shape[0]] = c
        counts += torch.bincount(c, minlength=K).double()
        if metric == "cos":
            proj.index_add_(0, c, (xb * C[c]).sum(1).double())
    if metric == "cos":
        scale = (proj / counts.clamp_min(1)).clamp_min(1e-12)
        C = C * scale.float()[:, None]
    return C, codes, counts


def _rvq_sample(N: int, levels, opts, seed: int):
    """(rng, sel): the sorted rows sel [m] that residual k-means runs on (every row, or
    max_points_per_centroid * max(levels) drawn at random) and the generator that drew them."""
    mppc = opts["max_points_per_centroid"]
    m = N if mppc is None else min(N, mppc * max(levels))
    rng = _rng(seed, 1)
    return rng, (np.arange(N) if m == N else np.sort(rng.choice(N, size=m, replace=False)))


def _rvq(src: _Source, levels, metric, opts, seed, batch, progress, ckpt, resume_state, sample=None):
    """Stage-by-stage k-means on the residuals of normalize(x) (or x); returns (codebooks, counts, sample size).

    ``sample``: the rows :func:`_rvq_sample` selects [m, d], already read (gathered from the ranks of a
    partitioned input); by default they are read from src (or streamed when they are all of a lazy src's rows).
    """
    torch = _torch()
    from tqdm.auto import tqdm

    N, dev = src.N, src.device
    init = opts["init"] or ("random" if metric == "l2" else "k-means++")
    iters = opts["kmeans_iters"] if opts["kmeans_iters"] is not None else (5 if metric == "l2" else 10)
    rng, sel = _rvq_sample(N, levels, opts, seed)
    m = int(sel.size)
    in_memory = sample is not None or m < N or not src.lazy
    if in_memory:
        if sample is not None:
            t = sample.to(dev)
        else:
            parts = [src.rows(sel[i:i + batch]) for i in range(0, m, batch)]
            t = torch.cat(parts) if parts else torch.empty((0, src.d), device=dev)
        if opts["progressive"]:  # random order, so each progressive prefix is a random subset
            t = t[torch.from_numpy(rng.permutation(m)).to(dev)]
        if opts["normalize"]:
            t = torch.nn.functional.normalize(t, dim=1)
        res = _Mem(t)
        batch = max(batch, _MEM_BATCH)  # views, not copies: fewer, larger GEMMs
    codes_all = torch.empty((m, len(levels)), dtype=torch.int64, device=dev)
    cbs, counts = [], []
    start = 0
    if resume_state is not None:
        cbs = [c.to(dev) for c in resume_state["codebooks"]]
        counts = [c.to(dev) for c in resume_state["counts"]]
        start = len(cbs)
    for l in range(len(levels)):
        if not in_memory:
            res = _Residuals(src, opts["normalize"], cbs[:l], codes_all)
        if l < start:  # resumed: recompute this stage's codes with its saved codebook
            assign = _Assigner(cbs[l], metric)
            for lo in range(0, m, batch):
                xb = res.slice(lo, min(m, lo + batch))
                codes_all[lo:lo + xb.shape[0], l] = assign(xb)
        else:
            with tqdm(total=iters, desc=f"rvq stage {l + 1}/{len(levels)}",
                      disable=not progress, leave=False) as bar:
                C, codes, cnt = _stage_fit(res, levels[l], metric, iters, init,
                                           _rng(seed, 2, l), batch, bar, opts["progressive"],
                                           opts["warmup_iters"] if metric == "l2" else 0)
            codes_all[:, l] = codes
            cbs.append(C)
            counts.append(cnt)
            if ckpt is not None:
                ckpt.save({"stage": l + 1, "codebooks": [c.cpu() for c in cbs],
                           "counts": [c.cpu() for c in counts]})
        if in_memory and l + 1 < len(levels):
            res.t -= cbs[l][codes_all[:, l]]
    return cbs, counts, m
