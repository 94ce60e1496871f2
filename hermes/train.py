"""Training: ``hermes.fit`` (the Learned Semantic Transform trained with the residual quantizer, or plain
residual k-means) and ``hermes.kmeans``, whose assignment step runs on hermes's own assignment kernels.

Everything is written in device-generic torch: the input's device (or ``device=``) is where the work runs.
Inputs are read in minibatches (a numpy memmap larger than memory is never loaded whole).
"""
from __future__ import annotations

import hashlib
import json
import math

import numpy as np

from ._checkpoint import CHECKPOINT_NAME, _Checkpoint, _data_fingerprint  # noqa: F401 (re-exported)
from ._ema import _dist, _hermes, _rvq_rank0, project_orthogonal  # noqa: F401 (re-exported)
from ._kmeans import _KMEANS_BATCH, kmeans
from ._sources import _Source, _torch
from ._validate import check_int, check_metric
from .model import MAX_CODEWORDS, MAX_LEVELS, Model

__all__ = ["fit", "kmeans", "project_orthogonal"]


# Defaults of the method options (paper values where the paper gives one; see ``fit``).
HERMES_DEFAULTS = dict(
    struct_pairs=2048, ortho_weight=0.1, commitment=0.25, ema_decay=0.99, ema_eps=1e-5,
    dead_code_threshold=2, kmeans_iters=10, max_points_per_centroid=256, init="k-means++", quant_grad=True,
    progressive=False, warmup_iters=2,
)
PLAIN_RVQ_DEFAULTS = {k: v for k, v in HERMES_DEFAULTS.items()
                      if k not in ("struct_pairs", "ortho_weight", "quant_grad")}
RESIDUAL_KMEANS_DEFAULTS = dict(kmeans_iters=None, max_points_per_centroid=256, init=None, normalize=True,
                                progressive=False, warmup_iters=2)
RVQ_DEFAULTS = RESIDUAL_KMEANS_DEFAULTS  # the old name of the residual k-means defaults

#: fit's methods, their option defaults, and the row of the paper each one reproduces.
METHODS = {
    "hermes": (HERMES_DEFAULTS, "HERMES: the LST (W, b) trained jointly with the EMA residual quantizer"),
    "plain_rvq": (PLAIN_RVQ_DEFAULTS, "plain RVQ: the same EMA quantizer (k-means init, EMA, dead-code reset, "
                                      "commitment) without the LST, W = I and b = 0 frozen"),
    "residual_kmeans": (RESIDUAL_KMEANS_DEFAULTS, "residual k-means: stage-by-stage k-means on the residuals, "
                                                  "no training (hermes's and plain RVQ's initialization)"),
}
#: names fit no longer takes, with what to use instead.
RENAMED_METHODS = {
    "rvq": "method='rvq' was residual k-means and is now called 'residual_kmeans'; the paper's plain RVQ "
           "(the EMA quantizer without the LST) is method='plain_rvq'",
}


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


def _check_method(fn, method):
    if method in RENAMED_METHODS:
        raise ValueError(f"{fn}: {RENAMED_METHODS[method]}")
    if method not in METHODS:
        raise ValueError(f"{fn}: method must be one of {', '.join(repr(m) for m in METHODS)}, got {method!r}")
    return method


def _check_options(fn, method, options):
    defaults = METHODS[method][0]
    unknown = sorted(set(options) - set(defaults))
    if unknown:
        raise TypeError(f"{fn}: unknown option(s) {', '.join(unknown)} for method={method!r}; "
                        f"known: {', '.join(sorted(defaults))}")
    o = {**defaults, **options}
    rk = method == "residual_kmeans"
    if not (rk and o["kmeans_iters"] is None):
        check_int(fn, "kmeans_iters", o["kmeans_iters"], 0)
    check_int(fn, "warmup_iters", o["warmup_iters"], 0)
    if o["max_points_per_centroid"] is not None:
        check_int(fn, "max_points_per_centroid", o["max_points_per_centroid"], 1)
    if o["init"] not in ("k-means++", "random") and not (rk and o["init"] is None):
        raise ValueError(f"{fn}: init must be 'k-means++' or 'random'{' or None' if rk else ''}, "
                         f"got {o['init']!r}")
    if method == "hermes":
        check_int(fn, "struct_pairs", o["struct_pairs"], 1)
    if not rk:
        check_int(fn, "dead_code_threshold", o["dead_code_threshold"], 0)
        for name in ("ortho_weight", "commitment", "ema_eps"):
            if name not in o:
                continue
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
            Or the result of :func:`hermes.readers.open_fit_input` (files read per DDP rank; see DDP below).
        levels: codebook sizes per stage, e.g. ``(256, 256, 256)`` (1 to 8 positive integers <= 65,536).
        method: ``"hermes"``: the Learned Semantic Transform h = normalize(W x + b) (W starts as the
            identity, b as zeros) trained jointly with the residual quantizer, as in the paper:
            loss = L_struct + L_quant + ortho_weight * L_ortho + commitment * sum_l MSE(r_l, sg(q_l)),
            with L_struct = mean over ``struct_pairs`` random pairs (i, j) of the minibatch of
            (cos(x_i, x_j) - cos(h_i, h_j))^2, L_quant = MSE(h, sg(q_1 + ... + q_L)),
            L_ortho = ||W^T W - I||_F^2, r_l the stage-l residual and q_l its codeword; MSE is the mean
            over rows and dimensions (``F.mse_loss``, as vector-quantize-pytorch, which the paper builds on).
            AdamW on (W, b), then W <- its nearest orthogonal matrix U V^T after every optimizer step
            (Newton-Schulz iterations, an SVD only as fallback: :func:`project_orthogonal`), codebooks
            initialised by k-means on the first residuals (of normalize(x), since W = I and b = 0 at the
            start), then EMA-updated every step (cluster sums and Laplace-smoothed counts); after each
            update every codeword whose EMA cluster size is below ``dead_code_threshold`` is replaced by
            a residual drawn from the current minibatch (as vector-quantize-pytorch).
            ``"plain_rvq"``: the paper's plain RVQ, "the same quantizer without the LST": the same
            k-means init, EMA updates, dead-code reset and commitment term, with W = I and b = 0
            frozen (no optimizer; the loss terms are only reported).
            ``"residual_kmeans"``: residual k-means, no training: stage-by-stage k-means on the
            current residuals of normalize(x), each stage's codes the greedy nearest codeword (as
            faiss's ResidualQuantizer with Train_default and beam 1). It is the other two methods'
            initialization. ``"rvq"`` (this method's old name) raises ValueError saying so.
        metric: ``"cos"`` (each stage assigns by cosine, as the paper) or ``"l2"`` (classic RVQ).
            Under cos the stored codewords keep their least-squares scale (the cluster mean, or the
            centroid direction times the members' mean projection), so decode() reconstructs well.
        epochs: passes over x (``"hermes"``, ``"plain_rvq"``; ``"residual_kmeans"`` uses ``kmeans_iters``
            per stage instead).
        batch_size: minibatch rows per optimizer step (per rank under DDP).
        lr, weight_decay: AdamW hyper-parameters (paper: 3e-4, 1e-4).
        device: where to train (default: x's device; numpy input: CPU). Any torch device works.
        seed: seeds every random choice (samples, k-means++, permutations, pairs, dead-code draws).
            The same seed, data and device give the same model, bit for bit on the CPU.
        progress: tqdm bars: one per epoch with the loss terms and the dead codes reset so far as postfix
            (hermes, plain_rvq), one per stage (residual_kmeans).
        checkpoint_dir: a directory; a checkpoint ``hermes_fit.ckpt`` is written there atomically after
            every epoch (hermes, plain_rvq; also once after the k-means init, as epoch 0) or every stage
            (residual_kmeans).
        resume: continue from the checkpoint in ``checkpoint_dir`` (a fresh start if there is none).
            The checkpoint carries a fingerprint of the configuration and of the data (N, d, 3 rows);
            a mismatch raises ValueError naming the file and the differing settings. ``epochs`` is not
            part of the fingerprint, so a finished run can be extended. A resumed run gives the same
            model as an uninterrupted one (bit for bit on the CPU).
        **method_options: ``"hermes"``: ``struct_pairs`` (2048 random pairs per minibatch for L_struct),
            ``ortho_weight`` (0.1), ``commitment`` (beta = 0.25, stop-gradient on the codeword),
            ``ema_decay`` (0.99; the paper does not give it, vector-quantize-pytorch defaults
            to 0.8: on the bundled data, fit on 16,000 rows and scored on the 4,000 others, 0.99 gave
            L1 exp(H) 209.3, cos to centroid 0.6199, 3-stage error 0.527; 0.8 gave 154.9, 0.6063, 0.589), ``ema_eps`` (1e-5 Laplace smoothing of
            the EMA counts), ``dead_code_threshold`` (2: EMA cluster size, checked every step; 0 turns
            the reset off), ``kmeans_iters`` (10),
            ``max_points_per_centroid`` (256: the k-means init runs on at most 256 * max(levels)
            sampled rows, as faiss does; None for all rows), ``init`` ("k-means++" or "random"),
            ``quant_grad`` (True: L_quant back-propagates into W and b; False: it is only reported).
            ``progressive`` (False; see below).
            ``"plain_rvq"``: the same options but ``struct_pairs``, ``ortho_weight``, ``quant_grad``.
            ``"residual_kmeans"``: ``kmeans_iters`` (None: 10 for cos, 5 for l2, see below), ``max_points_per_centroid``
            (256: each stage's k-means runs on at most 256 * max(levels) sampled rows, as faiss; None for
            all rows, streamed), ``progressive`` (False), ``init`` (None: "k-means++" for cos,
            "random" for l2, i.e. k distinct sampled rows as faiss), ``warmup_iters`` (2, l2 only),
            ``normalize`` (True: quantize normalize(x)).
            All methods also take ``warmup_iters`` (2): under metric="l2" the first ``warmup_iters``
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
        ``model.fused`` is True; ``"plain_rvq"`` and ``"residual_kmeans"`` have W = None and b = None.
        ``model.train_stats`` (a dict) holds, per epoch, the mean losses, the dead codes reset
        (``dead_codes_reset`` and ``dead_codes_reset_per_level``) and the seconds spent in data
        loading, forward, backward + AdamW, orthogonal projection and EMA updates + resets. For an
        ``open_fit_input`` x, ``input_rows_read`` counts the input rows this rank materialized: when
        the input was opened (``before_fit``), by the NaN check (``check``), the k-means init
        (``init``), the training epochs (``train``) and in all (``total``).

    DDP: when ``torch.distributed`` is initialized, every rank must pass the same x and arguments;
    each rank trains on its 1/world share of every global minibatch (``batch_size`` rows per rank),
    gradients are averaged (weighted by each rank's rows: when N is not a multiple of the global minibatch,
    the last one splits unevenly and can leave a rank none, which then contributes zero gradient and zero
    EMA counts but joins every collective) and EMA statistics summed with all_reduce, and the k-means init
    (computed on rank 0 alone) and dead-code resets are broadcast from rank 0 (from the first rank with rows
    when the last minibatch left rank 0 none). Each rank checks its own 1/world of the
    rows for NaN / Inf; a bad row fails every rank (its own error on the rank that found it). Only rank 0
    writes checkpoints and shows progress. To read files without every rank loading all of them, pass
    :func:`hermes.readers.open_fit_input`'s result as x (``hermes fit`` under torchrun does): a
    ``ShardArray`` (local .npy / .safetensors) is read by rows, like a memmap; a ``RowPartition``
    (parquet, remote objects) holds rank r's contiguous 1/world of the rows, and each rank then draws
    its part of every global minibatch from a seeded permutation of its own partition instead of every
    world-th row of one global permutation (each global minibatch is then stratified over the
    partitions; ``ceil(N / (batch_size * world))`` steps per epoch on every rank as before), and the
    k-means sample (the same rows as without DDP) is gathered from the partitions to rank 0.

    Raises:
        ValueError / TypeError naming the argument: x (not 2-d float, NaN/Inf rows, fewer rows than
        max(levels)), levels, method, metric, epochs, batch_size, lr, unknown method options; ValueError
        naming the checkpoint file when resuming from a different configuration.
    """
    fn = "fit"
    torch = _torch()
    _check_method(fn, method)
    levels = _check_levels(fn, levels)
    check_metric(fn, metric)
    epochs = check_int(fn, "epochs", epochs, 0)
    batch_size = check_int(fn, "batch_size", batch_size, 1)
    seed = check_int(fn, "seed", seed, 0)
    for name, v in (("lr", lr), ("weight_decay", weight_decay)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
            raise ValueError(f"{fn}: {name} must be a finite number >= 0, got {v!r}")
    opts = _check_options(fn, method, method_options)
    src = _Source(fn, x, device)
    read0 = src.rows_read
    _check_rows(src)  # every row, also those outside the k-means sample of method="residual_kmeans"
    read1 = src.rows_read
    if src.N < max(levels):
        raise ValueError(f"{fn}: x has {src.N} training vectors, fewer than the {max(levels)} codewords of "
                         f"levels={levels}; give more rows or smaller levels")
    if resume and checkpoint_dir is None:
        raise ValueError(f"{fn}: resume=True needs checkpoint_dir")
    ckpt, blob = None, None
    if checkpoint_dir is not None:
        config = {"method": method, "levels": list(levels), "metric": metric, "seed": seed,
                  "options": {k: v for k, v in sorted(opts.items())}, "data": _data_fingerprint(src)}
        if method != "residual_kmeans":
            config.update(batch_size=batch_size, lr=lr, weight_decay=weight_decay, world=_dist()[2])
        fp = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()
        ckpt = _Checkpoint(checkpoint_dir, fp, json.loads(json.dumps(config, default=str)))
        if resume:
            blob = ckpt.load()
    dist, rank, _ = _dist()
    if method == "residual_kmeans":
        read2 = src.rows_read
        with torch.no_grad():
            cbs, counts, m = _rvq_rank0(src, levels, metric, opts, seed, max(batch_size, _KMEANS_BATCH), progress,
                                        ckpt if rank == 0 else None, blob)
            if dist is not None:  # rank 0 computed them
                m_t = torch.tensor([float(m)], dtype=torch.float64, device=src.device)
                for t in [*cbs, *counts, m_t]:
                    dist.broadcast(t, 0)
                m = int(m_t.item())
        model = Model([c.cpu().numpy() for c in cbs], metric=metric, normalize=opts["normalize"])
        model.train_stats = {"method": "residual_kmeans", "rows_used": m,
                             "bucket_sizes": [c.cpu().numpy().astype(np.int64) for c in counts]}
        if read0 is not None:
            model.train_stats["input_rows_read"] = {"before_fit": read0, "check": read1 - read0,
                                                    "init": src.rows_read - read2, "total": src.rows_read}
        return model
    learn = method == "hermes"
    W, b, C, stats = _hermes(src, levels, metric, opts, epochs, batch_size, lr, weight_decay, seed, progress,
                             ckpt, blob, learn_transform=learn)
    model = Model([c.cpu().numpy() for c in C], W=W.cpu().numpy() if learn else None,
                  b=b.cpu().numpy() if learn else None, metric=metric, normalize=True)
    model.train_stats = {"method": method, **stats}
    if read0 is not None:
        model.train_stats["input_rows_read"] = {"before_fit": read0, "check": read1 - read0,
                                                **stats["input_rows_read"], "total": src.rows_read}
    return model


def _check_rows(src: _Source) -> None:
    """src.check_all over this rank's own rows (all rows without DDP). Under DDP the ranks then agree
    (all_reduce) whether any found a bad row, so none waits for the others in a collective: the rank that
    found it raises its error (naming the global row), the others say another rank found one."""
    torch = _torch()
    dist, rank, world = _dist()
    err = None
    try:
        src.check_all(*src.own_rows(rank, world))
    except ValueError as e:
        if dist is None:
            raise
        err = e
    if dist is not None:
        flag = torch.tensor([0 if err is None else 1], dtype=torch.int32, device=src.device)
        dist.all_reduce(flag)  # SUM: the number of ranks that found a bad row
        if err is not None:
            raise err
        if int(flag.item()):
            raise ValueError(f"{src.fn}: another rank found a NaN / Inf or oversized row of x in its share (its "
                             f"error names the row); rank {rank} found none in its own")

