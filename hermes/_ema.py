"""The EMA residual-quantizer trainer behind ``fit(method="hermes")``: state init (residual k-means),
one training step (forward, loss, backward, AdamW, orthogonal projection), the EMA codebook update and
the dead-code reset, each its own function; DDP helpers."""
from __future__ import annotations

import json
import math
import time

import numpy as np

from ._kmeans import _KMEANS_BATCH, _rvq, _rvq_sample
from ._sources import _dist, _gather_rows, _Source, _rng, _torch, _torch_gen
from .model import codeword_term


# ------------------------------------------------------------------------------------------ hermes
def _save_hermes(ckpt, epoch, state, stats):
    ckpt.save({"epoch": epoch, "W": state.W.detach().cpu(), "b": state.b.detach().cpu(),
               "opt": state.opt.state_dict() if state.opt is not None else {}, "codebooks": [c.cpu() for c in state.C],
               "ema_n": [c.cpu() for c in state.ema_n], "ema_s": [c.cpu() for c in state.ema_s],
               "stats": json.dumps(stats)})


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


class _State:
    """What the hermes trainer carries between steps: the transform (W, b) and its optimizer, the
    codebooks C[l] [K_l, d] and their EMA statistics (ema_n[l] [K_l] cluster sizes, ema_s[l] [K_l, d]
    cluster sums), all on the training device."""

    def __init__(self, W, b, opt, C, ema_n, ema_s):
        self.W, self.b, self.opt, self.C, self.ema_n, self.ema_s = W, b, opt, C, ema_n, ema_s


def _init_state(src: _Source, levels, metric, opts, batch, lr, wd, seed, progress, resume_blob, stats,
                learn_transform: bool = True):
    """The trainer's starting state: W = I, b = 0, codebooks from residual k-means on normalize(x), EMA
    statistics scaled to one global minibatch; or the state of a checkpoint. Returns (state, first epoch).
    Without ``learn_transform`` (plain RVQ) W and b stay I and 0 and there is no optimizer."""
    torch = _torch()
    dist, rank, world = _dist()
    dev, d = src.device, src.d
    W = torch.nn.Parameter(torch.eye(d, device=dev), requires_grad=learn_transform)
    b = torch.nn.Parameter(torch.zeros(d, device=dev), requires_grad=learn_transform)
    opt = torch.optim.AdamW([W, b], lr=lr, weight_decay=wd) if learn_transform else None
    if resume_blob is not None and "epoch" in resume_blob:
        with torch.no_grad():
            W.copy_(resume_blob["W"])
            b.copy_(resume_blob["b"])
        if opt is not None:
            opt.load_state_dict(resume_blob["opt"])
        C = [c.to(dev) for c in resume_blob["codebooks"]]
        ema_n = [c.to(dev) for c in resume_blob["ema_n"]]
        ema_s = [c.to(dev) for c in resume_blob["ema_s"]]
        saved = resume_blob.get("stats", stats)
        stats.clear()
        stats.update(json.loads(saved) if isinstance(saved, str) else saved)
        return _State(W, b, opt, C, ema_n, ema_s), int(resume_blob["epoch"])
    t0 = time.perf_counter()
    rvq_opts = dict(kmeans_iters=opts["kmeans_iters"], max_points_per_centroid=opts["max_points_per_centroid"],
                    init=opts["init"], normalize=True, progressive=opts["progressive"],
                    warmup_iters=opts["warmup_iters"])
    with torch.no_grad():
        C, counts, m = _rvq_rank0(src, levels, metric, rvq_opts, seed, max(batch, _KMEANS_BATCH), progress,
                                  None, None)
    # EMA statistics start at the k-means solution, scaled to one (global) minibatch.
    gb = batch * world
    ema_n = [c.float() * (gb / m) for c in counts]
    ema_s = [Ci * n[:, None] for Ci, n in zip(C, ema_n)]
    if dist is not None:  # rank 0 computed the init
        for t in [*C, *ema_n, *ema_s]:
            dist.broadcast(t, 0)
    stats["init_s"] = time.perf_counter() - t0
    return _State(W, b, opt, C, ema_n, ema_s), 0


def _rvq_rank0(src: _Source, levels, metric, opts, seed, batch, progress, ckpt, resume_state):
    """Residual k-means (:func:`_rvq`) computed on rank 0 alone under DDP (the other ranks would compute the
    same from the same seed and read the same sample): a partitioned input first gathers the sample rows from
    every rank's partition to rank 0. Returns (codebooks, counts, m) on rank 0; on other ranks zeros of the
    same shapes (and m = 1), for the caller to broadcast into."""
    torch = _torch()
    dist, rank, _ = _dist()
    if dist is None:
        return _rvq(src, levels, metric, opts, seed, batch, progress, ckpt, resume_state)
    sample = None
    if src.part is not None:
        sample = _gather_rows(src, _rvq_sample(src.N, levels, opts, seed)[1], dst=0)
    if rank == 0:
        return _rvq(src, levels, metric, opts, seed, batch, progress, ckpt, resume_state, sample=sample)
    dev = src.device
    return ([torch.zeros((K, src.d), device=dev) for K in levels],
            [torch.zeros(K, dtype=torch.float64, device=dev) for K in levels], 1)


def _quantize(h, C, metric):
    """Greedy residual quantization of h [B, d] with codebooks C (no gradient through the choice).

    Returns (final residual r_L [B, d] with gradient to h, commitment sum_l MSE(r_l, sg(q_l)),
    residuals [r_l detached [B, d]] per stage, codes [[B] int64] per stage).
    """
    torch = _torch()
    F = torch.nn.functional
    r, commit, res, codes = h, 0.0, [], []
    for Cl in C:
        with torch.no_grad():
            rd = r.detach()
            s = rd @ Cl.T
            term = codeword_term(Cl, metric)
            s = s * term if metric == "cos" else 2 * s - term
            c = torch.argmax(s, dim=1)
        q = Cl[c]
        commit = commit + F.mse_loss(r, q)
        res.append(r.detach())
        codes.append(c)
        r = r - q
    return r, commit, res, codes


def _train_step(state: _State, e, opts, metric, gen, eye, tm, share: float = 1.0):
    """One training step on the minibatch e [B, d]: forward (transform, quantize, loss terms), backward,
    AdamW, then W <- its nearest orthogonal matrix. Without an optimizer (plain RVQ: W = I, b = 0 frozen)
    only the forward runs and the loss terms are reported.

    Under DDP e is this rank's part of the global minibatch and ``share`` its fraction of the global
    minibatch's rows: the ranks' gradients are summed weighted by their shares, so the row-mean loss
    terms get the gradient of the mean over the whole global minibatch even when the last one splits
    unevenly. A rank with no rows (B = 0: the last global minibatch has fewer rows than ranks) computes
    nothing, contributes a zero gradient and still joins the all-reduce and the optimizer step.

    Returns (loss terms as floats, or None when B = 0; residuals per stage [B, d]; codes per stage [B]);
    adds seconds to tm.
    """
    torch = _torch()
    F = torch.nn.functional
    dist, _, _ = _dist()
    W, b = state.W, state.b
    B = e.shape[0]
    t1 = time.perf_counter()
    if B == 0:
        res = [e.new_zeros((0, e.shape[1])) for _ in state.C]
        codes = [torch.zeros(0, dtype=torch.int64, device=e.device) for _ in state.C]
        vals = None
        for p in (W, b) if state.opt is not None else ():
            p.grad = torch.zeros_like(p)
    elif state.opt is None:
        with torch.no_grad():
            h = F.normalize(e, dim=1)
            r, commit, res, codes = _quantize(h, state.C, metric)
            l_quant = (r ** 2).mean()
        vals = dict(loss=float(l_quant + opts["commitment"] * commit), quant=float(l_quant), commit=float(commit))
    else:
        en = F.normalize(e, dim=1)
        h = F.normalize(F.linear(e, W, b), dim=1)
        r, commit, res, codes = _quantize(h, state.C, metric)
        l_quant = (r ** 2).mean() if opts["quant_grad"] else (r.detach() ** 2).mean()
        pairs = opts["struct_pairs"]
        i = torch.randint(0, B, (pairs,), generator=gen, device=e.device)
        j = torch.randint(0, B, (pairs,), generator=gen, device=e.device)
        # index_select, not h[i]: the backward of advanced indexing with repeated indices accumulates
        # with atomics on multi-threaded CPUs (run-to-run different gradients); index_select's is
        # deterministic.
        hi_, hj_ = h.index_select(0, i), h.index_select(0, j)
        l_struct = (((en.index_select(0, i) * en.index_select(0, j)).sum(1) - (hi_ * hj_).sum(1)) ** 2).mean()
        l_ortho = ((W.T @ W - eye) ** 2).sum()
        loss = l_struct + l_quant + opts["ortho_weight"] * l_ortho + opts["commitment"] * commit
        terms = dict(loss=loss, struct=l_struct, quant=l_quant, ortho=l_ortho, commit=commit)
        vals = {k: float(v.detach()) if hasattr(v, "detach") else float(v) for k, v in terms.items()}
    t2 = time.perf_counter()
    tm["forward"] += t2 - t1
    if state.opt is None:
        return vals, res, codes
    if B:
        state.opt.zero_grad(set_to_none=True)
        loss.backward()
    if dist is not None:
        for p in (W, b):
            p.grad.mul_(share)
            dist.all_reduce(p.grad)
    state.opt.step()
    t3 = time.perf_counter()
    with torch.no_grad():
        W.copy_(project_orthogonal(W))
    t4 = time.perf_counter()
    tm["backward"] += t3 - t2
    tm["project"] += t4 - t3
    return vals, res, codes


def _ema_update(state: _State, res, codes, decay: float, eps: float):
    """EMA codebook update from one minibatch (sums over all DDP ranks): per stage l,
    ema_n <- decay ema_n + (1 - decay) counts, ema_s <- decay ema_s + (1 - decay) sums, and
    C[l] = ema_s / (Laplace-smoothed ema_n). Returns the per-stage batch counts [K_l] (float32)."""
    torch = _torch()
    dist, _, _ = _dist()
    out = []
    with torch.no_grad():
        for l, Cl in enumerate(state.C):
            K, d = Cl.shape
            cnt = torch.bincount(codes[l], minlength=K).float()
            sm = torch.zeros((K, d), device=Cl.device).index_add_(0, codes[l], res[l])
            if dist is not None:
                dist.all_reduce(cnt)
                dist.all_reduce(sm)
            state.ema_n[l].mul_(decay).add_(cnt, alpha=1 - decay)
            state.ema_s[l].mul_(decay).add_(sm, alpha=1 - decay)
            tot = state.ema_n[l].sum()
            smooth = (state.ema_n[l] + eps) / (tot + K * eps) * tot
            state.C[l] = state.ema_s[l] / smooth[:, None]
            out.append(cnt)
    return out


def _dead_codes(state: _State, threshold: float) -> list:
    """Per stage, the codewords (index tensors) whose EMA cluster size is below ``threshold``."""
    torch = _torch()
    return [torch.nonzero(n < threshold).flatten() for n in state.ema_n]


def _reset_dead_codes(state: _State, dead, res, threshold: float, rng: np.random.Generator, src: int = 0) -> list:
    """Replaces the codewords dead[l] (index tensors) of each stage with residuals res[l] drawn at random
    (with replacement, as vector-quantize-pytorch) from the current minibatch, their EMA size set to
    ``threshold`` and their EMA sum to threshold * the residual; under DDP drawn from rank ``src``'s part
    of the minibatch and broadcast from it (rank 0, unless the last global minibatch left it no rows).
    Returns the number of codewords reset per stage."""
    torch = _torch()
    dist, _, _ = _dist()
    total = []
    with torch.no_grad():
        for l, dl in enumerate(dead):
            if dl.numel() and res is not None:
                pool = res[l]
                if pool.shape[0]:  # a rank without rows only receives the broadcast
                    pick = torch.from_numpy(rng.integers(0, pool.shape[0], size=dl.numel())).to(pool.device)
                    state.C[l][dl] = pool[pick]
                    state.ema_n[l][dl] = float(threshold)
                    state.ema_s[l][dl] = pool[pick] * float(threshold)
                if dist is not None:
                    for t in (state.C[l], state.ema_n[l], state.ema_s[l]):
                        dist.broadcast(t, src)
            total.append(int(dl.numel()))
    return total


def _rank_rows(src: _Source, step: int, batch: int, world: int) -> list:
    """The number of rows each DDP rank takes from global minibatch ``step``, as :func:`_hermes` slices it:
    every world-th row of the global slice [step batch world, (step + 1) batch world) of N, or, for a
    partitioned input, the slice [step batch, (step + 1) batch) of the rank's own partition. Only the last
    minibatch can be uneven, and can leave a rank with none (N = 5, world = 2, batch = 2: [1, 0])."""
    if src.part is None:
        g = min(batch * world, src.N - step * batch * world)
        return [max(0, -(-(g - r) // world)) for r in range(world)]
    bounds = src.part[2]
    return [min(batch, max(0, int(bounds[r + 1] - bounds[r]) - step * batch)) for r in range(world)]


def _hermes(src: _Source, levels, metric, opts, epochs, batch, lr, wd, seed, progress, ckpt, resume_blob,
            learn_transform: bool = True):
    """The training loop: returns (W [d, d], b [d], codebooks, stats).

    Every step: a training step, the EMA codebook update from the minibatch, then, as
    vector-quantize-pytorch does, every codeword whose EMA cluster size fell below
    ``dead_code_threshold`` is replaced by a residual of the current minibatch (``_reset_dead_codes``).
    ``learn_transform=False`` is plain RVQ: the same quantizer with W = I and b = 0 frozen.
    """
    torch = _torch()
    from tqdm.auto import tqdm

    dist, rank, world = _dist()
    N, d, dev = src.N, src.d, src.device
    stats = {"epochs": [], "init_s": 0.0}
    read0 = src.rows_read
    state, start_epoch = _init_state(src, levels, metric, opts, batch, lr, wd, seed, progress, resume_blob, stats,
                                     learn_transform)
    read1 = src.rows_read
    if start_epoch == 0 and (resume_blob is None or "epoch" not in resume_blob) and ckpt is not None and rank == 0:
        _save_hermes(ckpt, 0, state, stats)
    decay, eps, thr = opts["ema_decay"], opts["ema_eps"], opts["dead_code_threshold"]
    steps = max(1, math.ceil(N / (batch * world)))
    eye = torch.eye(d, device=dev)
    name = "hermes" if learn_transform else "plain rvq"
    for epoch in range(start_epoch, epochs):
        rng = _rng(seed, 3, epoch)
        gen = _torch_gen(rng, dev)
        if src.part is None:  # one global permutation; rank r takes every world-th row of each global minibatch
            perm = rng.permutation(N)
        else:  # a partitioned input: each rank draws its minibatch rows from a permutation of its partition
            lo, hi, _ = src.part
            lperm = lo + _rng(seed, 4, epoch, rank).permutation(hi - lo)
        tm = dict(data=0.0, forward=0.0, backward=0.0, project=0.0, ema=0.0)
        sums: dict = {}  # loss terms summed over the `done` steps in which this rank had rows
        done = 0
        resets = [0] * len(levels)
        with tqdm(total=steps, desc=f"{name} epoch {epoch + 1}/{epochs}", disable=not progress or rank,
                  leave=False) as bar:
            for step in range(steps):
                t0 = time.perf_counter()
                if src.part is None:
                    idx = perm[step * batch * world:(step + 1) * batch * world][rank::world]
                else:
                    idx = lperm[step * batch:(step + 1) * batch]
                rows = _rank_rows(src, step, batch, world)  # every rank's len(idx), known without communication
                if len(idx) != rows[rank]:
                    raise RuntimeError(f"hermes: rank {rank} holds {len(idx)} rows of minibatch {step}, "
                                       f"expected {rows[rank]}")
                e = src.rows(np.sort(idx))
                tm["data"] += time.perf_counter() - t0
                vals, res, codes = _train_step(state, e, opts, metric, gen, eye, tm, rows[rank] / sum(rows))
                t4 = time.perf_counter()
                _ema_update(state, res, codes, decay, eps)
                if thr > 0:
                    src_rank = next(r for r, n in enumerate(rows) if n)
                    for l, k in enumerate(_reset_dead_codes(state, _dead_codes(state, thr), res, thr, rng,
                                                            src_rank)):
                        resets[l] += k
                tm["ema"] += time.perf_counter() - t4
                if vals is not None:  # None: this rank had no rows in this (last) minibatch
                    done += 1
                    for k_, v in vals.items():
                        sums[k_] = sums.get(k_, 0.0) + v
                    bar.set_postfix({**{k_: f"{v:.4g}" for k_, v in vals.items()}, "reset": sum(resets)})
                bar.update(1)
        stats["epochs"].append({"epoch": epoch + 1, "steps": steps, "dead_codes_reset": sum(resets),
                                "dead_codes_reset_per_level": resets,
                                **{f"mean_{k_}": v / done for k_, v in sums.items()},
                                **{f"{k_}_s": v for k_, v in tm.items()}})
        if ckpt is not None and rank == 0:
            _save_hermes(ckpt, epoch + 1, state, stats)
    if read0 is not None:  # input rows this rank materialized (ShardArray / RowPartition inputs)
        stats["input_rows_read"] = {"init": read1 - read0, "train": src.rows_read - read1}
    return state.W.detach(), state.b.detach(), state.C, stats
