"""Training: ``hermes.fit`` (the Learned Semantic Transform trained with the residual quantizer, or plain
residual k-means) and ``hermes.kmeans``, whose assignment step runs on hermes's own assignment kernels.

Everything is written in device-generic torch: the input's device (or ``device=``) is where the work runs.
Inputs are read in minibatches (a numpy memmap larger than memory is never loaded whole).
"""
from __future__ import annotations

import hashlib
import json
import math
import time
from pathlib import Path

import numpy as np

from ._io import atomic_path
from ._validate import check_matrix, describe, is_torch
from .model import MAX_CODEWORDS, MAX_LEVELS, METRICS, Model

__all__ = ["fit", "kmeans"]

CHECKPOINT_NAME = "hermes_fit.ckpt"
CHECKPOINT_FORMAT = 1
_KMEANS_BATCH = 16384
_WARMUP_STRIDE = 2  # warm-up iterations read every other row: a partition by direction needs fewer
_MEM_BATCH = 65536  # rows per GEMM when the rvq sample is in memory ([B, K] float32 scores: 64 MiB at K = 256)

# Defaults of the method options (paper values where the paper gives one; see ``fit``).
HERMES_DEFAULTS = dict(
    struct_pairs=2048, ortho_weight=0.1, commitment=0.25, ema_decay=0.99, ema_eps=1e-5,
    dead_code_threshold=2, kmeans_iters=10, max_points_per_centroid=256, init="k-means++", quant_grad=True,
    progressive=False, warmup_iters=2,
)
RVQ_DEFAULTS = dict(kmeans_iters=None, max_points_per_centroid=256, init=None, normalize=True,
                    progressive=False, warmup_iters=2)


# ------------------------------------------------------------------------------------- data access
def _torch():
    import torch

    return torch


def _writable(a) -> np.ndarray:
    """float32 C-contiguous, copied when the view is read-only (a read-only memmap slice)."""
    a = np.ascontiguousarray(a, dtype=np.float32)
    return a if a.flags.writeable else a.copy()


class _Source:
    """Rows of the user's x as float32 torch tensors on ``device``, checked for NaN/Inf, read lazily."""

    def __init__(self, fn: str, x, device):
        torch = _torch()
        check_matrix(fn, "x", x)
        self.fn, self.x = fn, x
        self.N, self.d = int(x.shape[0]), int(x.shape[1])
        self.torch_in = is_torch(x)
        if self.torch_in:
            self.x = x.detach()
        if device is None:
            device = x.device if self.torch_in else "cpu"
        try:
            self.device = torch.device(device)
        except (RuntimeError, TypeError) as e:
            raise ValueError(f"{fn}: device must be a torch device or string like 'cpu' / 'cuda:0', "
                             f"got {device!r}") from e
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError(f"{fn}: device is {self.device} but torch sees no CUDA device")

    def _check(self, t, rows):
        torch = _torch()
        ok = torch.isfinite(t).all(dim=1)
        if not bool(ok.all()):
            r = int(torch.nonzero(~ok)[0, 0])
            row = int(rows[r]) if rows is not None else r
            raise ValueError(f"{self.fn}: x row {row} contains NaN or Inf")
        return t

    def slice(self, lo: int, hi: int):
        torch = _torch()
        if self.torch_in:
            t = self.x[lo:hi].to(device=self.device, dtype=torch.float32)
        else:
            t = torch.from_numpy(_writable(self.x[lo:hi])).to(self.device)
        return self._check(t, np.arange(lo, hi))

    def rows(self, idx: np.ndarray):
        """Rows ``idx`` (sorted ascending for memmap locality) in that order."""
        torch = _torch()
        if self.torch_in:
            t = self.x[torch.from_numpy(idx).to(self.x.device)].to(device=self.device, dtype=torch.float32)
        else:
            t = torch.from_numpy(_writable(self.x[idx])).to(self.device)
        return self._check(t, idx)


class _Mem:
    """An in-memory [N, d] float32 tensor seen through the same interface as :class:`_Source`."""

    def __init__(self, t):
        self.t, self.N, self.d, self.device = t, int(t.shape[0]), int(t.shape[1]), t.device

    def slice(self, lo, hi):
        return self.t[lo:hi]

    def rows(self, idx):
        return self.t[_torch().from_numpy(np.asarray(idx)).to(self.device)]


class _Residuals:
    """Stage-l residuals of normalize(x) recomputed per batch from stored codes (streaming, O(N L) memory)."""

    def __init__(self, src: _Source, normalize: bool, codebooks: list, codes):
        self.src, self.normalize, self.C, self.codes = src, normalize, codebooks, codes
        self.N, self.d, self.device = src.N, src.d, src.device

    def _res(self, t, sel):
        torch = _torch()
        if self.normalize:
            t = torch.nn.functional.normalize(t, dim=1)
        for l, C in enumerate(self.C):
            t = t - C[self.codes[sel, l]]
        return t

    def slice(self, lo, hi):
        return self._res(self.src.slice(lo, hi), slice(lo, hi))

    def rows(self, idx):
        return self._res(self.src.rows(idx), _torch().from_numpy(np.asarray(idx)).to(self.device))


def _rng(seed: int, *tags: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(seed), *[int(t) for t in tags]]))


def _torch_gen(rng: np.random.Generator, device):
    g = _torch().Generator(device=device)
    g.manual_seed(int(rng.integers(0, 2**62)))
    return g


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
            c64 = C.double()
            n2 = (c64 * c64).sum(1)
            if metric == "l2":
                cterm = n2
            else:  # 1 / ||c|| (0 for a zero centroid, which then never wins a cosine argmax)
                n = n2.sqrt()
                cterm = torch.where(n > 0, 1.0 / n.clamp_min(1e-300), torch.zeros_like(n))
            self.cterm = np.ascontiguousarray(cterm.numpy(), dtype=np.float32)
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


def _check_int(fn: str, name: str, v, lo: int = 1):
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
        raise ValueError(f"{fn}: {name} must be an integer >= {lo}, got {v!r}")
    return int(v)


def _check_metric(fn: str, metric):
    if metric not in METRICS:
        raise ValueError(f"{fn}: metric must be 'cos' or 'l2', got {metric!r}")
    return metric


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
    _check_metric(fn, metric)
    src = _Source(fn, x, device)
    k = _check_int(fn, "k", k)
    iters = _check_int(fn, "iters", iters, 0)
    batch_size = _check_int(fn, "batch_size", batch_size)
    if k > MAX_CODEWORDS:
        raise ValueError(f"{fn}: k = {k} is above the {MAX_CODEWORDS} codewords a level supports")
    if src.N < k:
        raise ValueError(f"{fn}: x has {src.N} rows, fewer than k = {k} centroids")
    init = _check_init(fn, init, k, src.d)
    if init_size is not None:
        init_size = _check_int(fn, "init_size", init_size, k)
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


def _rvq(src: _Source, levels, metric, opts, seed, batch, progress, ckpt, resume_state):
    """Stage-by-stage k-means on the residuals of normalize(x) (or x); returns (codebooks, counts, sample)."""
    torch = _torch()
    from tqdm.auto import tqdm

    N, dev = src.N, src.device
    mppc = opts["max_points_per_centroid"]
    init = opts["init"] or ("random" if metric == "l2" else "k-means++")
    iters = opts["kmeans_iters"] if opts["kmeans_iters"] is not None else (5 if metric == "l2" else 10)
    m = N if mppc is None else min(N, mppc * max(levels))
    rng = _rng(seed, 1)
    sel = np.arange(N) if m == N else np.sort(rng.choice(N, size=m, replace=False))
    in_memory = m < N or not (isinstance(src.x, np.memmap))
    if in_memory:
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


# ------------------------------------------------------------------------------------- checkpoints
class _Checkpoint:
    """One checkpoint file per run directory, written atomically (temp file + os.replace)."""

    def __init__(self, directory, fingerprint: str, config: dict):
        self.dir = Path(directory)
        self.path = self.dir / CHECKPOINT_NAME
        self.fingerprint, self.config = fingerprint, config

    def save(self, state: dict) -> None:
        torch = _torch()
        self.dir.mkdir(parents=True, exist_ok=True)
        blob = {"format": CHECKPOINT_FORMAT, "fingerprint": self.fingerprint,
                "config": json.dumps(self.config, sort_keys=True), **state}
        atomic_path(self.path, lambda tmp: torch.save(blob, tmp))

    def load(self):
        torch = _torch()
        if not self.path.is_file():
            return None
        try:
            blob = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise ValueError(f"fit: checkpoint {self.path} is not readable ({e})") from e
        if not isinstance(blob, dict) or blob.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"fit: {self.path} is not a hermes fit checkpoint (format "
                             f"{blob.get('format') if isinstance(blob, dict) else None!r})")
        if blob.get("fingerprint") != self.fingerprint:
            try:
                old = json.loads(blob.get("config", "{}"))
            except ValueError:
                old = {}
            diff = sorted(k for k in set(old) | set(self.config) if old.get(k) != self.config.get(k))
            raise ValueError(f"fit: checkpoint {self.path} was written by a different configuration "
                             f"(differs in: {', '.join(diff) or 'fingerprint'}); use another "
                             f"checkpoint_dir or resume=False to start over")
        return blob


def _data_fingerprint(src: _Source) -> str:
    """A hash of N, d and a few rows (first, middle, last): catches resuming on different data cheaply."""
    h = hashlib.sha256(f"{src.N}x{src.d}".encode())
    for r in sorted({0, src.N // 2, src.N - 1}):
        h.update(src.rows(np.array([r])).cpu().numpy().tobytes())
    return h.hexdigest()[:16]


# ----------------------------------------------------------------------------------------- DDP
def _dist():
    """(torch.distributed, rank, world) when a process group is initialized, else (None, 0, 1)."""
    torch = _torch()
    d = torch.distributed
    if d.is_available() and d.is_initialized():
        return d, d.get_rank(), d.get_world_size()
    return None, 0, 1


# ------------------------------------------------------------------------------------------ hermes
def _save_hermes(ckpt, epoch, W, b, opt, C, ema_n, ema_s, stats):
    ckpt.save({"epoch": epoch, "W": W.detach().cpu(), "b": b.detach().cpu(), "opt": opt.state_dict(),
               "codebooks": [c.cpu() for c in C], "ema_n": [c.cpu() for c in ema_n],
               "ema_s": [c.cpu() for c in ema_s], "stats": json.dumps(stats)})


def project_orthogonal(W, *, max_iter: int = 10):
    """The orthogonal matrix nearest to W [d, d] in Frobenius norm: the polar factor U Vᵀ of W = U S Vᵀ.

    After an optimizer step W is close to orthogonal, so Newton–Schulz iterations X ← X (3I − XᵀX) / 2
    (two GEMMs each, quadratic convergence) reach the polar factor in two or three steps, several times
    faster than an SVD at d = 1024 (and closer to the float64 polar factor than a float32 SVD). With
    E = XᵀX − I, one step maps E to −(3/4)E² + (1/4)E³, so ||E'||_F ≤ (3/4)e² + (1/4)e³ for e = ||E||_F;
    the last step is taken once that bound is at the fp32 floor (2e-7 d). The SVD is used instead when a
    singular value may exceed √3 (the largest absolute row sum of WᵀW is 3 or more: the iteration could then
    converge to a different orthogonal matrix), when the error stops shrinking (W nearly singular), or after
    ``max_iter`` steps. On CUDA the iteration runs in float64, so TF32 matmul settings cannot touch it.
    """
    torch = _torch()
    X = W.double() if W.is_cuda else W
    eye = torch.eye(W.shape[0], dtype=X.dtype, device=W.device)
    prev, floor = math.inf, 2e-7 * W.shape[0]  # about where fp32 rounding leaves ||XᵀX − I||_F
    for it in range(max_iter):
        A = X.T @ X
        # The iteration converges to the polar factor when every singular value is in (0, √3); beyond √3 it
        # can converge to another orthogonal matrix. σ_max² = ||XᵀX||_2 ≤ its largest absolute row sum.
        if it == 0 and not float(A.abs().sum(1).max()) < 3.0:
            break
        err = float(torch.linalg.matrix_norm(A - eye))
        if not err < prev:  # not converging (NaN included)
            break
        X = X @ (1.5 * eye - 0.5 * A)
        if 0.75 * err * err + 0.25 * err ** 3 <= floor:
            return X.to(W.dtype)
        prev = err
    U, _, Vh = torch.linalg.svd(W)
    return U @ Vh


def _hermes(src: _Source, levels, metric, opts, epochs, batch, lr, wd, seed, progress, ckpt, resume_blob):
    torch = _torch()
    from tqdm.auto import tqdm

    F = torch.nn.functional
    dist, rank, world = _dist()
    N, d, dev = src.N, src.d, src.device
    L = len(levels)
    stats = {"epochs": [], "init_s": 0.0}
    W = torch.nn.Parameter(torch.eye(d, device=dev))
    b = torch.nn.Parameter(torch.zeros(d, device=dev))
    opt = torch.optim.AdamW([W, b], lr=lr, weight_decay=wd)
    decay, eps = opts["ema_decay"], opts["ema_eps"]
    start_epoch = 0
    if resume_blob is not None and "epoch" in resume_blob:
        with torch.no_grad():
            W.copy_(resume_blob["W"])
            b.copy_(resume_blob["b"])
        opt.load_state_dict(resume_blob["opt"])
        C = [c.to(dev) for c in resume_blob["codebooks"]]
        ema_n = [c.to(dev) for c in resume_blob["ema_n"]]
        ema_s = [c.to(dev) for c in resume_blob["ema_s"]]
        start_epoch = int(resume_blob["epoch"])
        stats = resume_blob.get("stats", stats)
        if isinstance(stats, str):
            stats = json.loads(stats)
    else:
        t0 = time.perf_counter()
        rvq_opts = dict(kmeans_iters=opts["kmeans_iters"], max_points_per_centroid=opts["max_points_per_centroid"],
                        init=opts["init"], normalize=True, progressive=opts["progressive"],
                        warmup_iters=opts["warmup_iters"])
        with torch.no_grad():
            C, counts, m = _rvq(src, levels, metric, rvq_opts, seed, max(batch, _KMEANS_BATCH), progress, None, None)
        # EMA statistics start at the k-means solution, scaled to one (global) minibatch.
        gb = batch * world
        ema_n = [c.float() * (gb / m) for c in counts]
        ema_s = [Ci * n[:, None] for Ci, n in zip(C, ema_n)]
        if dist is not None:  # every rank computes the same init from the same seed; rank 0's wins
            for t in [*C, *ema_n, *ema_s]:
                dist.broadcast(t, 0)
        stats["init_s"] = time.perf_counter() - t0
        if ckpt is not None and rank == 0:
            _save_hermes(ckpt, 0, W, b, opt, C, ema_n, ema_s, stats)
    steps = max(1, math.ceil(N / (batch * world)))
    pairs = opts["struct_pairs"]
    eye = torch.eye(d, device=dev)
    for epoch in range(start_epoch, epochs):
        rng = _rng(seed, 3, epoch)
        gen = _torch_gen(rng, dev)
        perm = rng.permutation(N)
        usage = [torch.zeros(K, dtype=torch.float64, device=dev) for K in levels]
        tm = dict(data=0.0, forward=0.0, backward=0.0, project=0.0, ema=0.0)
        sums = dict(loss=0.0, struct=0.0, quant=0.0, ortho=0.0, commit=0.0)
        last_res = None
        with tqdm(total=steps, desc=f"hermes epoch {epoch + 1}/{epochs}", disable=not progress or rank,
                  leave=False) as bar:
            for step in range(steps):
                t0 = time.perf_counter()
                gidx = perm[step * batch * world:(step + 1) * batch * world]
                idx = np.sort(gidx[rank::world])
                e = src.rows(idx)
                t1 = time.perf_counter()
                en = F.normalize(e, dim=1)
                h = F.normalize(F.linear(e, W, b), dim=1)
                r, commit, res, codes = h, 0.0, [], []
                for l in range(L):
                    with torch.no_grad():
                        rd = r.detach()
                        s = rd @ C[l].T
                        if metric == "cos":
                            n = C[l].norm(dim=1)
                            s = s * torch.where(n > 0, 1.0 / n, torch.zeros_like(n))
                        else:
                            s = 2 * s - (C[l] * C[l]).sum(1)
                        c = torch.argmax(s, dim=1)
                    q = C[l][c]
                    commit = commit + F.mse_loss(r, q)
                    res.append(r.detach())
                    codes.append(c)
                    r = r - q
                l_quant = (r ** 2).mean() if opts["quant_grad"] else (r.detach() ** 2).mean()
                B = e.shape[0]
                i = torch.randint(0, B, (pairs,), generator=gen, device=dev)
                j = torch.randint(0, B, (pairs,), generator=gen, device=dev)
                # index_select, not h[i]: the backward of advanced indexing with repeated indices accumulates
                # with atomics on multi-threaded CPUs (run-to-run different gradients); index_select's is
                # deterministic.
                hi_, hj_ = h.index_select(0, i), h.index_select(0, j)
                l_struct = (((en.index_select(0, i) * en.index_select(0, j)).sum(1) - (hi_ * hj_).sum(1)) ** 2).mean()
                l_ortho = ((W.T @ W - eye) ** 2).sum()
                loss = l_struct + l_quant + opts["ortho_weight"] * l_ortho + opts["commitment"] * commit
                t2 = time.perf_counter()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if dist is not None:
                    for p in (W, b):
                        dist.all_reduce(p.grad)
                        p.grad /= world
                opt.step()
                t3 = time.perf_counter()
                with torch.no_grad():
                    W.copy_(project_orthogonal(W))
                t4 = time.perf_counter()
                with torch.no_grad():
                    for l in range(L):
                        K = levels[l]
                        cnt = torch.bincount(codes[l], minlength=K).float()
                        sm = torch.zeros((K, d), device=dev).index_add_(0, codes[l], res[l])
                        if dist is not None:
                            dist.all_reduce(cnt)
                            dist.all_reduce(sm)
                        usage[l] += cnt.double()
                        ema_n[l].mul_(decay).add_(cnt, alpha=1 - decay)
                        ema_s[l].mul_(decay).add_(sm, alpha=1 - decay)
                        tot = ema_n[l].sum()
                        smooth = (ema_n[l] + eps) / (tot + K * eps) * tot
                        C[l] = ema_s[l] / smooth[:, None]
                    last_res = res
                t5 = time.perf_counter()
                tm["data"] += t1 - t0
                tm["forward"] += t2 - t1
                tm["backward"] += t3 - t2
                tm["project"] += t4 - t3
                tm["ema"] += t5 - t4
                terms = dict(loss=loss, struct=l_struct, quant=l_quant, ortho=l_ortho, commit=commit)
                vals = {k_: float(v.detach()) if hasattr(v, "detach") else float(v) for k_, v in terms.items()}
                for k_, v in vals.items():
                    sums[k_] += v
                bar.set_postfix({k_: f"{v:.4g}" for k_, v in vals.items()})
                bar.update(1)
        # Dead codes: used fewer than `dead_code_threshold` times this epoch -> a sampled residual.
        dead_total = 0
        with torch.no_grad():
            for l in range(L):
                dead = torch.nonzero(usage[l] < opts["dead_code_threshold"]).flatten()
                if dead.numel() and last_res is not None:
                    pool = last_res[l]
                    pick = torch.from_numpy(rng.integers(0, pool.shape[0], size=dead.numel())).to(dev)
                    C[l][dead] = pool[pick]
                    ema_n[l][dead] = float(opts["dead_code_threshold"])
                    ema_s[l][dead] = pool[pick] * float(opts["dead_code_threshold"])
                    if dist is not None:
                        for t in (C[l], ema_n[l], ema_s[l]):
                            dist.broadcast(t, 0)
                dead_total += int(dead.numel())
        stats["epochs"].append({"epoch": epoch + 1, "steps": steps, "dead_codes_reset": dead_total,
                                **{f"mean_{k_}": v / steps for k_, v in sums.items()},
                                **{f"{k_}_s": v for k_, v in tm.items()}})
        if ckpt is not None and rank == 0:
            _save_hermes(ckpt, epoch + 1, W, b, opt, C, ema_n, ema_s, stats)
    return W.detach(), b.detach(), C, stats


# --------------------------------------------------------------------------------------------- fit
def _check_levels(fn, levels):
    if isinstance(levels, (int, np.integer)) and not isinstance(levels, bool):
        levels = (levels,)
    if not isinstance(levels, (list, tuple)) or not levels:
        raise ValueError(f"{fn}: levels must be a non-empty tuple of positive integers, got {levels!r}")
    if len(levels) > MAX_LEVELS:
        raise ValueError(f"{fn}: levels has {len(levels)} entries; at most {MAX_LEVELS} are supported")
    for i, K in enumerate(levels):
        if isinstance(K, bool) or not isinstance(K, (int, np.integer)) or not 1 <= K <= MAX_CODEWORDS:
            raise ValueError(f"{fn}: levels[{i}] must be a positive integer <= {MAX_CODEWORDS}, got {K!r} "
                             f"(levels={levels!r})")
    return tuple(int(K) for K in levels)


def _check_options(fn, method, options):
    defaults = HERMES_DEFAULTS if method == "hermes" else RVQ_DEFAULTS
    unknown = sorted(set(options) - set(defaults))
    if unknown:
        raise TypeError(f"{fn}: unknown option(s) {', '.join(unknown)} for method={method!r}; "
                        f"known: {', '.join(sorted(defaults))}")
    o = {**defaults, **options}
    if not (method == "rvq" and o["kmeans_iters"] is None):
        _check_int(fn, "kmeans_iters", o["kmeans_iters"], 0)
    _check_int(fn, "warmup_iters", o["warmup_iters"], 0)
    if o["max_points_per_centroid"] is not None:
        _check_int(fn, "max_points_per_centroid", o["max_points_per_centroid"])
    if o["init"] not in ("k-means++", "random") and not (method == "rvq" and o["init"] is None):
        raise ValueError(f"{fn}: init must be 'k-means++' or 'random'{' or None' if method == 'rvq' else ''}, "
                         f"got {o['init']!r}")
    if method == "hermes":
        _check_int(fn, "struct_pairs", o["struct_pairs"])
        _check_int(fn, "dead_code_threshold", o["dead_code_threshold"], 0)
        for name in ("ortho_weight", "commitment", "ema_eps"):
            if not isinstance(o[name], (int, float)) or isinstance(o[name], bool) or o[name] < 0:
                raise ValueError(f"{fn}: {name} must be a number >= 0, got {o[name]!r}")
        if not isinstance(o["ema_decay"], (int, float)) or not 0 <= o["ema_decay"] < 1:
            raise ValueError(f"{fn}: ema_decay must be in [0, 1), got {o['ema_decay']!r}")
    return o


def fit(x, levels=(256, 256, 256), *, method: str = "hermes", metric: str = "cos", epochs: int = 10,
        batch_size: int = 1024, lr: float = 3e-4, weight_decay: float = 1e-4, device=None, seed: int = 0,
        progress: bool = True, checkpoint_dir=None, resume: bool = False, **method_options) -> Model:
    """Trains a hermes labeler on embeddings ``x``.

    Args:
        x: ``[N, d]`` training embeddings: a numpy array (a memmap larger than memory is streamed in
            minibatches, never loaded whole), or a torch tensor (CPU or CUDA). N >= max(levels).
        levels: codebook sizes per stage, e.g. ``(256, 256, 256)`` (1 to 8 positive integers <= 65,536).
        method: ``"hermes"``: the Learned Semantic Transform h = normalize(W x + b) (W starts as the
            identity, b as zeros) trained jointly with the residual quantizer, as in the paper:
            loss = L_struct + L_quant + ortho_weight * L_ortho + commitment * sum_l MSE(r_l, sg(q_l)),
            with L_struct = mean over ``struct_pairs`` random pairs (i, j) of the minibatch of
            (cos(x_i, x_j) - cos(h_i, h_j))^2, L_quant = MSE(h, sg(q_1 + ... + q_L)),
            L_ortho = ||W^T W - I||_F^2, r_l the stage-l residual and q_l its codeword; MSE is the mean
            over rows and dimensions (``F.mse_loss``, as vector-quantize-pytorch, which the paper builds on).
            AdamW on (W, b), W <- U V^T (SVD) after every optimizer step, codebooks initialised by
            k-means on the first residuals (of normalize(x), since W = I and b = 0 at the start), then
            EMA-updated (cluster sums and Laplace-smoothed counts) with dead-code reset.
            ``"rvq"``: the plain-RVQ baseline (classic residual k-means): no transform (W = I, b = 0),
            stage-by-stage k-means on the current residuals of normalize(x), each stage's codes the
            greedy nearest codeword (as faiss's ResidualQuantizer with Train_default and beam 1).
        metric: ``"cos"`` (each stage assigns by cosine, as the paper) or ``"l2"`` (classic RVQ).
            Under cos the stored codewords keep their least-squares scale (the cluster mean, or the
            centroid direction times the members' mean projection), so decode() reconstructs well.
        epochs: passes over x (``"hermes"``; ``"rvq"`` uses ``kmeans_iters`` per stage instead).
        batch_size: minibatch rows per optimizer step (per rank under DDP).
        lr, weight_decay: AdamW hyper-parameters (paper: 3e-4, 1e-4).
        device: where to train (default: x's device; numpy input: CPU). Any torch device works.
        seed: seeds every random choice (samples, k-means++, permutations, pairs, dead-code draws).
            The same seed, data and device give the same model, bit for bit on the CPU.
        progress: tqdm bars: one per epoch with the loss terms as postfix (hermes), one per stage (rvq).
        checkpoint_dir: a directory; a checkpoint ``hermes_fit.ckpt`` is written there atomically after
            every epoch (hermes; also once after the k-means init, as epoch 0) or every stage (rvq).
        resume: continue from the checkpoint in ``checkpoint_dir`` (a fresh start if there is none).
            The checkpoint carries a fingerprint of the configuration and of the data (N, d, 3 rows);
            a mismatch raises ValueError naming the file and the differing settings. ``epochs`` is not
            part of the fingerprint, so a finished run can be extended. A resumed run gives the same
            model as an uninterrupted one (bit for bit on the CPU).
        **method_options: ``"hermes"``: ``struct_pairs`` (2048 random pairs per minibatch for L_struct),
            ``ortho_weight`` (0.1), ``commitment`` (beta = 0.25, stop-gradient on the codeword),
            ``ema_decay`` (0.99; the paper does not give it), ``ema_eps`` (1e-5 Laplace smoothing of
            the EMA counts), ``dead_code_threshold`` (2 uses per epoch), ``kmeans_iters`` (10),
            ``max_points_per_centroid`` (256: the k-means init runs on at most 256 * max(levels)
            sampled rows, as faiss does; None for all rows), ``init`` ("k-means++" or "random"),
            ``quant_grad`` (True: L_quant back-propagates into W and b; False: it is only reported).
            ``progressive`` (False; see below).
            ``"rvq"``: ``kmeans_iters`` (None: 10 for cos, 5 for l2, see below), ``max_points_per_centroid``
            (256: each stage's k-means runs on at most 256 * max(levels) sampled rows, as faiss; None for
            all rows, streamed), ``progressive`` (False), ``init`` (None: "k-means++" for cos,
            "random" for l2, i.e. k distinct sampled rows as faiss), ``warmup_iters`` (2, l2 only),
            ``normalize`` (True: quantize normalize(x)).
            Both methods also take ``warmup_iters`` (2): under metric="l2" the first ``warmup_iters``
            of the ``kmeans_iters`` Lloyd iterations of every stage assign rows by cosine (direction),
            over every other sampled row, and the rest by L2 over all of them; centroids are plain
            means. Stage-2+ residuals surround the origin with similar norms; plain L2 Lloyd from
            sampled rows then collapses (the seed of smallest norm is nearest to most rows, most other
            seeds keep one or two rows: on the bundled MiniLM data 3 x 256 ends at error 0.524 with 10
            iterations, faiss at 0.506). With the warm-up, 5 iterations (2 + 3) reach 0.482 and 10
            reach 0.469, hence the l2 default of 5: about 5 GEMM passes over the sample per stage (the
            warm-up ones are half passes, plus the final encoding) against faiss's 10 plus an encoding
            of every row, at a lower error. Under cos, 10 iterations from k-means++ keep the L1 buckets
            on scikit-learn's KMeans plateau (random seeds lost 2-5% of exp(H) in our runs).

    ``progressive=True`` runs k-means progressively on the in-memory sample: early Lloyd iterations see
    a random subset (at least 32 rows per centroid), the last ones every sampled row. About 2x faster;
    on clustered synthetic data as good, on the real MiniLM embeddings ~5% fewer effective buckets at
    L1 = 256, hence off by default.

    Returns:
        a :class:`hermes.Model`. For ``"hermes"`` W is orthogonal (to float32 precision), so
        ``model.fused`` is True. ``model.train_stats`` (a dict) holds per-epoch mean losses and the
        seconds spent in data loading, forward, backward + AdamW, SVD projection and EMA updates.

    DDP: when ``torch.distributed`` is initialized, every rank must pass the same x and arguments;
    each rank trains on its 1/world share of every global minibatch (``batch_size`` rows per rank),
    gradients are averaged and EMA statistics summed with all_reduce, and the k-means init and
    dead-code resets are broadcast from rank 0. Only rank 0 writes checkpoints and shows progress.

    Raises:
        ValueError / TypeError naming the argument: x (not 2-d float, NaN/Inf rows, fewer rows than
        max(levels)), levels, method, metric, epochs, batch_size, lr, unknown method options; ValueError
        naming the checkpoint file when resuming from a different configuration.
    """
    fn = "fit"
    torch = _torch()
    if method not in ("hermes", "rvq"):
        raise ValueError(f"{fn}: method must be 'hermes' or 'rvq', got {method!r}")
    levels = _check_levels(fn, levels)
    _check_metric(fn, metric)
    epochs = _check_int(fn, "epochs", epochs, 0)
    batch_size = _check_int(fn, "batch_size", batch_size)
    seed = _check_int(fn, "seed", seed, 0)
    for name, v in (("lr", lr), ("weight_decay", weight_decay)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
            raise ValueError(f"{fn}: {name} must be a finite number >= 0, got {v!r}")
    opts = _check_options(fn, method, method_options)
    src = _Source(fn, x, device)
    if src.N < max(levels):
        raise ValueError(f"{fn}: x has {src.N} training vectors, fewer than the {max(levels)} codewords of "
                         f"levels={levels}; give more rows or smaller levels")
    if resume and checkpoint_dir is None:
        raise ValueError(f"{fn}: resume=True needs checkpoint_dir")
    ckpt, blob = None, None
    if checkpoint_dir is not None:
        config = {"method": method, "levels": list(levels), "metric": metric, "seed": seed,
                  "options": {k: v for k, v in sorted(opts.items())}, "data": _data_fingerprint(src)}
        if method == "hermes":
            config.update(batch_size=batch_size, lr=lr, weight_decay=weight_decay, world=_dist()[2])
        fp = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()
        ckpt = _Checkpoint(checkpoint_dir, fp, json.loads(json.dumps(config, default=str)))
        if resume:
            blob = ckpt.load()
    if method == "rvq":
        with torch.no_grad():
            cbs, counts, m = _rvq(src, levels, metric, opts, seed, max(batch_size, _KMEANS_BATCH), progress,
                                  ckpt, blob)
        model = Model([c.cpu().numpy() for c in cbs], metric=metric, normalize=opts["normalize"])
        model.train_stats = {"method": "rvq", "rows_used": m,
                             "bucket_sizes": [c.cpu().numpy().astype(np.int64) for c in counts]}
        return model
    W, b, C, stats = _hermes(src, levels, metric, opts, epochs, batch_size, lr, weight_decay, seed, progress,
                             ckpt, blob)
    model = Model([c.cpu().numpy() for c in C], W=W.cpu().numpy(), b=b.cpu().numpy(), metric=metric,
                  normalize=True)
    model.train_stats = {"method": "hermes", **stats}
    return model
