"""assign_codes, transform, decode and quantization_error: thin wrappers over the CPU and CUDA executors.

Codes are ``int32`` arrays ``[N, L]``: column l holds the stage-l codeword index in ``[0, K_l)``.
numpy in gives numpy out; a torch tensor in gives a torch tensor out on the same device.
"""
from __future__ import annotations

import functools
import re

import numpy as np

from . import _backend
from ._backend import _C
from ._validate import check_codes, check_int, check_matrix, is_torch
from .model import METRICS, Model

CPU_BATCH = 16384
CUDA_BATCH = 1 << 16


def _check_model(fn: str, model) -> Model:
    if not isinstance(model, Model):
        raise TypeError(f"{fn}: model must be a hermes.Model, got {type(model).__name__}")
    return model


def _nthreads() -> int:
    import torch

    return max(1, torch.get_num_threads())


def _progress(total: int, enabled, desc: str):
    from tqdm.auto import tqdm

    disable = (total < (1 << 21)) if enabled is None else not enabled
    return tqdm(total=total, unit="rows", unit_scale=True, desc=desc, disable=disable, leave=False)


def _cpu_source(fn: str, x):
    """Returns (get_batch(lo, hi) -> float32 C-contiguous numpy, N, get_raw) without copying the whole input.

    A batch is valid until the next get_batch call (float16 input is converted into one reused buffer).
    get_raw(lo, hi) -> float16 / bfloat16 rows as they are (C-contiguous), for the bf16 screen, which converts
    them row by row itself; None for float32 and float64 input.
    """
    if is_torch(x):
        import torch

        x = x.detach()
        if x.dtype in (torch.float32, torch.float16, torch.float64):
            x = x.numpy()
        else:  # bfloat16 has no numpy dtype: convert per batch in torch, into one reused buffer
            tscratch = []

            def get_bf16(lo, hi):
                if not tscratch or tscratch[0].shape[0] < hi - lo:
                    tscratch[:] = [torch.empty((hi - lo,) + tuple(x.shape[1:]), dtype=torch.float32)]
                return tscratch[0][:hi - lo].copy_(x[lo:hi]).numpy()

            return get_bf16, x.shape[0], (lambda lo, hi: x[lo:hi].contiguous())
    if x.dtype == np.float16:  # the C++ conversion is several times faster than numpy's
        nt = _nthreads()
        scratch = []  # one float32 buffer reused by every batch (fresh pages per batch cost page faults)

        def get16(lo, hi):
            chunk = np.ascontiguousarray(x[lo:hi])
            if not scratch or scratch[0].shape[0] < chunk.shape[0]:
                scratch[:] = [np.empty(chunk.shape, dtype=np.float32)]
            out = scratch[0][:chunk.shape[0]]
            _C.f16_to_f32_cpu(chunk.view(np.int16), out, nt)
            return out

        return get16, x.shape[0], (lambda lo, hi: np.ascontiguousarray(x[lo:hi]))
    return (lambda lo, hi: np.ascontiguousarray(x[lo:hi], dtype=np.float32)), x.shape[0], None


def _tensor(a: np.ndarray):
    """torch view of a numpy array that hermes only reads (memmaps and arrow buffers are read-only)."""
    import warnings

    import torch

    if a.flags.writeable:
        return torch.from_numpy(a)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(a)


_NORM_MAX = float(np.sqrt(np.finfo(np.float32).max))  # ~1.84e19: a larger norm's square overflows float32
_BAD_ROW = re.compile(r"^\w+: x row (\d+)( .*)$", re.S)


def _raise_bad_row(fn: str, row: int, x=None):
    """Raises for row ``row`` of x: NaN or Inf, or (when x is given and the row is finite) a norm that overflows
    float32, which the float32 kernels cannot normalize."""
    if x is not None:
        r = x[row].detach().double().cpu().numpy() if is_torch(x) else np.asarray(x[row], dtype=np.float64)
        if np.isfinite(r).all():
            top = float(np.abs(r).max())
            norm = top * float(np.linalg.norm(r / top)) if top > 0 else 0.0
            raise ValueError(f"{fn}: x row {row} is finite but too large for float32: its norm {norm:.3g} (or that "
                             f"of W x + b) exceeds {_NORM_MAX:.3g}, whose square float32 cannot hold (largest |value| "
                             f"{top:.3g}); scale the embeddings down")
    raise ValueError(f"{fn}: x row {row} contains NaN or Inf")


# ------------------------------------------------------------------------------------ executor tables
PRECISIONS = ("auto", "fp32", "bf16")
_SCREEN_GIVE_UP = 32  # rescored codewords per row and level above which the fp32 search is cheaper
_bf16_probe: dict = {}


def _bf16_gemm_accumulates_fp32(device: str = "cpu") -> bool:
    """Probes torch's bf16 GEMM on `device` once for the error bound the screen relies on (fp32 accumulation).

    On CUDA the probe runs as the screen's GEMM runs: with reduced-precision bf16 reductions off.
    """
    if device not in _bf16_probe:
        import torch

        g = torch.Generator().manual_seed(0)
        a, b = torch.randn(64, 4096, generator=g), torch.randn(4096, 64, generator=g)
        exact = a.double() @ b.double()
        with _exact_bf16_reduction(device):
            approx = (a.bfloat16().to(device) @ b.bfloat16().to(device)).double().cpu()
        bound = 2.0 ** -8 * approx.abs() + (2.0 ** -7 + 2.0 ** -15 + 4096 * 2.0 ** -24) * (
            a.double().abs() @ b.double().abs())
        _bf16_probe[device] = bool(((approx - exact).abs() <= bound).all())
    return _bf16_probe[device]


class _exact_bf16_reduction:
    """Turns torch's reduced-precision bf16 reductions in cuBLAS off for the block and restores the setting
    (the screen's error bound assumes fp32 accumulation throughout the GEMM)."""

    def __init__(self, device):
        self.cuda = str(device).startswith("cuda")

    def __enter__(self):
        if self.cuda:
            import torch

            self.old = torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction
            torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction = False
        return self

    def __exit__(self, *exc):
        if self.cuda:
            import torch

            torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction = self.old
        return False


@functools.lru_cache(maxsize=None)
def _cpu_has_fast_bf16() -> bool:
    """True when this CPU multiplies bf16 natively (AVX512-BF16 or AMX) and torch's bf16 GEMM passes the probe."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "").split()
    except OSError:
        flags = []
    return ("avx512_bf16" in flags or "amx_bf16" in flags) and _bf16_gemm_accumulates_fp32()


def _duplicate_rows(C: np.ndarray) -> np.ndarray:
    """Indices of the rows of C [K, d] equal to a lower-index row (int32, increasing): codewords that never win.

    Rows compare by their bytes (10x faster than ``np.unique(axis=0)``): rows equal only up to the sign of a zero
    stay unmarked, which costs a candidate, never a code."""
    C = np.ascontiguousarray(C)
    _, first = np.unique(C.view(np.dtype((np.void, C.dtype.itemsize * C.shape[1]))).ravel(), return_index=True)
    keep = np.zeros(len(C), dtype=bool)
    keep[first] = True
    return np.flatnonzero(~keep).astype(np.int32)


def _screen_tables(model: Model, t):
    """The screen's operands on the host, built once: bf16(M), M^T, the column norms (rounded up), the shadow mask."""
    import torch

    if "M16" not in t.extra:
        up = lambda v: np.nextafter(v.astype(np.float32), np.float32(np.inf))  # noqa: E731  (round up)
        M16 = torch.from_numpy(t.M).to(torch.bfloat16)
        m16 = M16.double().numpy()
        dM = t.M.astype(np.float64) - m16  # exact: the bf16 rounding remainder of every entry
        shadow = np.zeros(t.M.shape[1], dtype=np.uint8)
        for l, C in enumerate(model.codebooks):
            shadow[t.offsets[l] + _duplicate_rows(np.asarray(C))] = 1
        t.extra.update(M16=M16, Mt=np.ascontiguousarray(t.M.T), m16_norm=up(np.sqrt((m16 * m16).sum(0))),
                       dm_norm=up(np.sqrt((dM * dM).sum(0))), shadow=shadow)
    return t.extra


def _exec_tables(model: Model, device, screen: bool):
    """(hermes._C.Tables of the model's search on `device`, bf16(M) for the screen's GEMM or None), cached per
    device. Folded: M = W^T C^T with beta, the cross tables T and W^T b; explicit: M = C^T and the codewords."""
    import torch

    host = model._host_tables()
    key = f"exec:{device}:{'screen' if screen else 'fp32'}"
    if key in host.extra:
        return host.extra[key]
    cuda = str(device).startswith("cuda")
    t = model._device_tables(torch.device(device)) if cuda else host
    up = (lambda a: torch.from_numpy(np.ascontiguousarray(a)).to(device)) if cuda else np.ascontiguousarray  # noqa: E731
    metric = _C.METRIC_L2 if model.metric == "l2" else _C.METRIC_COS
    cterm = up(np.concatenate(host.cterm))
    if host.folded:
        kw = dict(m=t.M, beta=t.beta, T=t.T, wtb=t.wtb)
        M16 = None
        if screen:
            st = _screen_tables(model, host)
            M16 = st["M16"].to(device) if cuda else st["M16"]
            kw.update(mt=up(st["Mt"]), m16_norm=up(st["m16_norm"]), dm_norm=up(st["dm_norm"]), shadow=up(st["shadow"]))
    else:
        kw = dict(m=t.Ct, c=up(np.concatenate(host.C)))
        M16 = None
    tab = _C.Tables(list(model.levels), metric, model.normalize, float(np.float32(host.bb)), cterm=cterm, **kw)
    host.extra[key] = (tab, M16)
    return host.extra[key]


def _first_bad(inv_s) -> int:
    """Index of the first NaN in inv_s (a row with NaN/Inf), or -1."""
    bad = np.flatnonzero(np.isnan(inv_s))
    return int(bad[0]) if bad.size else -1


# ------------------------------------------------------------------------------------------ CPU
def _assign_cpu(fn, x, model: Model, batch_size, progress, precision="auto"):
    """Per batch a fixed number of calls, none per level: norms (+ split), torch's GEMM, one epilogue call."""
    import torch

    t = model._host_tables()
    if precision == "bf16" and not _bf16_gemm_accumulates_fp32():
        raise RuntimeError(f"{fn}: precision='bf16' needs torch's CPU bf16 GEMM to accumulate in fp32, and a probe "
                           "says this torch/CPU does not; use precision='fp32' or 'auto'")
    screen = t.folded and (precision == "bf16" or (precision == "auto" and _cpu_has_fast_bf16()))
    tab, M16 = _exec_tables(model, "cpu", screen)
    get, N, get_raw = _cpu_source(fn, x)
    L, nt, d = model.L, _nthreads(), model.d
    codes = np.zeros((N, L), dtype=np.int32)
    B = min(batch_size, max(N, 1))
    # Scratch reused across batches (fresh pages per batch cost page faults comparable to the epilogue).
    inv_buf = np.empty(B, dtype=np.float32)
    x16_buf = np.empty((B, d), dtype=np.int16) if screen else None
    xn_buf, dxn_buf = (np.empty(B, dtype=np.float32), np.empty(B, dtype=np.float32)) if screen else (None, None)
    g16_buf = torch.empty((B, tab.cols), dtype=torch.bfloat16) if screen else None
    rescored = np.zeros(1, dtype=np.int64)
    M = torch.from_numpy(t.M) if t.folded else None
    Ct = [torch.from_numpy(np.ascontiguousarray(t.Ct[:, t.offsets[l]:t.offsets[l + 1]])) for l in range(L)] \
        if not t.folded else None
    with _progress(N, progress, "assign_codes") as bar:
        for lo in range(0, N, batch_size):
            hi = min(N, lo + batch_size)
            cb, inv_s = codes[lo:hi], inv_buf[:hi - lo]
            # float16 / bfloat16 rows go to the screen as they are (converted row by row in C++, no float32 copy)
            xb = get_raw(lo, hi) if screen and get_raw is not None else get(lo, hi)
            if t.folded and screen:
                x16, xn, dxn = x16_buf[:hi - lo], xn_buf[:hi - lo], dxn_buf[:hi - lo]
                _C.norms_split(xb, tab, inv_s, x16, xn, dxn, nthreads=nt)
                _check_bad(fn, inv_s, lo, x)
                g16 = torch.mm(torch.from_numpy(x16).view(torch.bfloat16), M16, out=g16_buf[:hi - lo])
                rescored[0] = 0
                _C.screen_rescore(g16, xb, tab, inv_s, xn, dxn, cb, rescored, nthreads=nt)
                if precision == "auto" and rescored[0] > _SCREEN_GIVE_UP * (hi - lo) * L:
                    screen = False  # scores too close for the bf16 screen on this data: fp32 from now on
                    tab, _ = _exec_tables(model, "cpu", False)
            elif t.folded:
                _C.norms_split(xb, tab, inv_s, nthreads=nt)
                _check_bad(fn, inv_s, lo, x)
                _C.argmax_levels(torch.mm(_tensor(xb), M), xb, tab, inv_s, cb, nthreads=nt)
            else:
                r = _rotate_cpu(fn, xb, model, t, nt, lo, x, inv_s)
                rt = torch.from_numpy(r)
                _C.argmax_residual_levels(r, tab, lambda l: torch.mm(rt, Ct[l]), cb, nthreads=nt)
            bar.update(hi - lo)
    return codes


def _check_bad(fn, inv_s, row0: int, x=None):
    bad = _first_bad(inv_s)
    if bad >= 0:
        _raise_bad_row(fn, row0 + bad, x)


def _rotate_cpu(fn, xb: np.ndarray, model: Model, t, nt: int, row0: int, x=None, inv_s=None) -> np.ndarray:
    """h = normalize(x W^T + b) for one float32 batch [B, d] (a new array): torch's GEMM, then normalize_rows."""
    import torch

    if model.W is None:
        h = xb + t.bias if model.b is not None else xb.copy()
    else:
        h = torch.addmm(torch.from_numpy(t.bias), _tensor(xb), torch.from_numpy(t.wt)).numpy()
    inv_s = np.empty(len(h), dtype=np.float32) if inv_s is None else inv_s
    _C.normalize_rows(h, model.normalize, inv_s, nthreads=nt)
    _check_bad(fn, inv_s, row0, x)
    return h


# ----------------------------------------------------------------------------------------- CUDA
def _cuda_ready(fn: str, x):
    import torch

    reason = _backend.cuda_unavailable_reason()
    if reason:
        raise RuntimeError(f"{fn}: x is a CUDA tensor but the CUDA path is unavailable: {reason}")
    if x.dtype == torch.float64:
        x = x.float()
    if x.stride(1) != 1 or x.stride(0) < x.shape[1]:
        x = x.contiguous()  # the kernels read rows with a stride; columns must be dense
    return x, torch.cuda.current_stream(x.device).cuda_stream


def _check_finite_cuda(fn: str, inv_s, row0: int = 0, x=None):
    import torch

    bad = ~torch.isfinite(inv_s)
    if bool(bad.any()):  # one device sync per call
        _raise_bad_row(fn, row0 + int(torch.nonzero(bad)[0, 0]), x)


def _assign_cuda(fn, x, model: Model, batch_size, check_finite: bool, precision: str = "auto"):
    """Per batch a fixed number of calls, none per level. Folded, screened (default): norms + split, one bf16
    cuBLAS GEMM for all levels, screen + rescore. Folded fp32: norms, then the fp32 SIMT kernels (the C++ loops the
    levels). Explicit: rotate, then the levels' SIMT search and residual updates (looped in C++)."""
    import torch

    x, stream = _cuda_ready(fn, x)
    dev = x.device
    with torch.cuda.device(dev):
        t = model._host_tables()
        N, d, L = x.shape[0], model.d, model.L
        codes = torch.empty((N, L), dtype=torch.int32, device=dev)
        inv_s = torch.empty((N,), dtype=torch.float32, device=dev)
        if N == 0:
            return codes
        key = str(dev)
        if precision == "bf16" and not _bf16_gemm_accumulates_fp32(key):
            raise RuntimeError(f"{fn}: precision='bf16' needs cuBLAS's bf16 GEMM to accumulate in fp32 on {key}, and "
                               "a probe says it does not; use precision='fp32' or 'auto'")
        screen = t.folded and precision != "fp32" and (precision == "bf16" or _bf16_gemm_accumulates_fp32(key))
        ex = dict(stream=stream)
        if t.folded and not screen:
            tab, _ = _exec_tables(model, key, False)
            _C.norms_split(x, tab, inv_s, **ex)
            _C.argmax_levels(None, x, tab, inv_s, codes, **ex)
        elif t.folded:
            _screen_cuda(fn, x, model, batch_size, precision, codes, inv_s, ex)
        else:
            tab, _ = _exec_tables(model, key, False)
            dt = torch.device(dev)
            tt = model._device_tables(dt)
            h = torch.empty((min(N, batch_size), d), dtype=torch.float32, device=dev)
            for lo in range(0, N, batch_size):
                hi = min(N, lo + batch_size)
                _C.rotate(x[lo:hi], tt.wt, tt.bias, model.normalize, h[:hi - lo], inv_s[lo:hi], **ex)
                _C.argmax_residual_levels(h[:hi - lo], tab, None, codes[lo:hi], **ex)
        if check_finite:
            _check_finite_cuda(fn, inv_s, 0, x)
    return codes


def _screen_cuda(fn, x, model: Model, batch_size: int, precision: str, codes, inv_s, ex):
    """The tensor-core screen over CUDA batches. The rescored counts come back through pinned memory without
    stalling the stream; once a finished batch shows the screen giving up (precision='auto'), the remaining
    batches take the fp32 SIMT kernels."""
    import torch

    dev, N, d, L = x.device, x.shape[0], model.d, model.L
    key = str(dev)
    tab, M16 = _exec_tables(model, key, True)
    B = min(batch_size, N)
    x16 = torch.empty((B, d), dtype=torch.bfloat16, device=dev) if x.dtype != torch.bfloat16 else None
    xn = torch.empty((B,), dtype=torch.float32, device=dev)
    dxn = torch.empty((B,), dtype=torch.float32, device=dev)
    g16 = torch.empty((B, tab.cols), dtype=torch.bfloat16, device=dev)
    nb = (N + B - 1) // B
    counts = torch.zeros((nb,), dtype=torch.int64, device=dev)
    counts_host = torch.zeros((nb,), dtype=torch.int64, pin_memory=True)
    events, seen, screen = [], 0, True
    for i, lo in enumerate(range(0, N, B)):
        hi = min(N, lo + B)
        xb, n = x[lo:hi], hi - lo
        if screen and precision == "auto":
            while seen < len(events) and events[seen].query():  # finished batches only: never waits
                if int(counts_host[seen]) > _SCREEN_GIVE_UP * B * L:
                    screen = False
                seen += 1
        if not screen:
            tab32, _ = _exec_tables(model, key, False)
            _C.norms_split(xb, tab32, inv_s[lo:hi], **ex)
            _C.argmax_levels(None, xb, tab32, inv_s[lo:hi], codes[lo:hi], **ex)
            continue
        a = xb if x16 is None else x16[:n]
        _C.norms_split(xb, tab, inv_s[lo:hi], None if x16 is None else a, xn[:n], dxn[:n], **ex)
        with _exact_bf16_reduction(key):
            torch.mm(a, M16, out=g16[:n])
        _C.screen_rescore(g16[:n], xb, tab, inv_s[lo:hi], xn[:n], dxn[:n], codes[lo:hi], counts[i:i + 1], **ex)
        counts_host[i:i + 1].copy_(counts[i:i + 1], non_blocking=True)
        ev = torch.cuda.Event()
        ev.record()
        events.append(ev)


def assign_codes_pipelined(batches, model: Model, device, batch_size: int, d: int):
    """Pipelined CUDA labeling of host batches: yields (row0, codes [b, L] numpy) one batch behind the input.

    Two pinned host buffers and two device buffers: batch i+1 is copied host->device on a side stream
    while the kernels label batch i on the current stream; codes come back through pinned memory. The
    only host wait is on batch i-1's completion event, after batch i has been queued.
    """
    import torch

    dev = torch.device(device)
    compute, copy = torch.cuda.current_stream(dev), torch.cuda.Stream(dev)
    L, slots, pending = model.L, [], None
    for _ in range(2):
        slots.append(dict(
            host=torch.empty((batch_size, d), dtype=torch.float32, pin_memory=True),
            dev=torch.empty((batch_size, d), dtype=torch.float32, device=dev),
            codes=torch.empty((batch_size, L), dtype=torch.int32, pin_memory=True),
            bad=torch.empty((batch_size,), dtype=torch.bool, pin_memory=True),
            copied=torch.cuda.Event(), done=torch.cuda.Event()))

    def finish(p):
        s, lo, n = p
        s["done"].synchronize()
        bad = s["bad"][:n].numpy()
        if bad.any():
            raise ValueError(f"x row {int(np.flatnonzero(bad)[0])} contains NaN or Inf")  # row within the batch
        return lo, s["codes"][:n].numpy().copy()

    for i, (lo, xb) in enumerate(batches):
        s, n = slots[i % 2], xb.shape[0]
        s["host"][:n].numpy()[...] = xb  # the slot is free: its previous batch was finished below
        with torch.cuda.stream(copy):
            s["dev"][:n].copy_(s["host"][:n], non_blocking=True)
            s["copied"].record(copy)
        with torch.cuda.stream(compute):
            compute.wait_event(s["copied"])
            x = s["dev"][:n]
            s["bad"][:n].copy_(~torch.isfinite(x).all(dim=1), non_blocking=True)
            s["codes"][:n].copy_(assign_codes(x, model, check_finite=False), non_blocking=True)
            s["done"].record(compute)
        if pending is not None:
            yield finish(pending)
        pending = (s, lo, n)
    if pending is not None:
        yield finish(pending)


# --------------------------------------------------------------------------------------- public
def assign_codes(x, model: Model, *, batch_size: int | None = None, progress=None, check_finite: bool = True,
                 precision: str = "auto"):
    """Labels every row of ``x`` with its residual-quantization code.

    Args:
        x: ``[N, d]`` embeddings: a numpy array (float32, float16 or float64; a memmap works and is read
            batch by batch), a torch CPU tensor, or a torch CUDA tensor (float32, float16, bfloat16; used
            zero-copy when its rows are dense, and the kernels run on ``torch.cuda.current_stream()``).
        model: a :class:`hermes.Model`.
        batch_size: rows per batch (CPU default 16384; on CUDA it bounds the scratch of the explicit path).
        progress: show a progress bar (``None``: only for inputs of 2M rows or more).
        check_finite: on CUDA, check for NaN/Inf rows (costs one device synchronization). On the CPU the
            check is always made, at no cost.
        precision: fused (folded) path only. ``"fp32"``: an fp32 search (CPU: one fp32 GEMM; CUDA: the fp32
            SIMT kernels). ``"bf16"``: a bf16 GEMM screens the codewords with a rigorous error bound and only
            the codewords that can still win are rescored exactly in fp32, so the codes are those of an fp32
            search (up to fp32 near-ties), not of a bf16 one; CPU and CUDA run the same screen code and give
            the same codes for the same bf16 GEMM output. ``"auto"`` (default): the screen on CUDA (cuBLAS
            bf16 GEMM on tensor cores, reduced-precision reductions off for the call) and on CPUs that multiply
            bf16 natively (AVX512-BF16/AMX), when a probe confirms the bf16 GEMM accumulates in fp32; it falls
            back to fp32 for the rest of the call when the data leaves too many candidates (more than 32 per
            row and level).

    Returns:
        codes ``[N, L]`` int32: ``codes[n, l]`` is the stage-l codeword of row n. Each stage picks the
        best codeword for the current residual of ``h = normalize(W x + b)`` under the model's metric;
        ties go to the lowest index. numpy in gives numpy out; torch in gives torch out on x's device.

    Raises:
        TypeError / ValueError naming the argument for a bad ``x`` (integer dtype, not 2-d, wrong d,
        NaN/Inf rows, naming the first bad row) or ``model``; RuntimeError for a CUDA tensor when the
        CUDA path is unavailable (CPU-only build, no driver or no device).
    """
    fn = "assign_codes"
    model = _check_model(fn, model)
    check_matrix(fn, "x", x, model.d)
    bs = _check_batch(fn, batch_size)
    if precision not in PRECISIONS:
        raise ValueError(f"{fn}: precision must be one of {PRECISIONS}, got {precision!r}")
    if is_torch(x) and x.device.type == "cuda":
        return _assign_cuda(fn, x, model, bs or CUDA_BATCH, check_finite, precision)
    if is_torch(x) and x.device.type != "cpu":
        raise ValueError(f"{fn}: x is on unsupported device {x.device}; use a CPU or CUDA tensor")
    codes = _assign_cpu(fn, x, model, bs or CPU_BATCH, progress, precision)
    if is_torch(x):
        import torch

        return torch.from_numpy(codes)
    return codes


def _check_batch(fn, batch_size):
    if batch_size is None:
        return None
    return check_int(fn, "batch_size", batch_size, 1)


def transform(x, model: Model, *, batch_size: int | None = None):
    """The Learned Semantic Transform: ``h = normalize(x W^T + b)`` row by row (the batched rotation).

    Args:
        x: ``[N, d]`` numpy array or torch tensor (CPU or CUDA), as for :func:`assign_codes`.
        model: a :class:`hermes.Model` (uses W, b and normalize).

    Returns:
        h ``[N, d]`` float32, numpy for numpy input, torch on x's device for torch input.
    """
    fn = "transform"
    model = _check_model(fn, model)
    check_matrix(fn, "x", x, model.d)
    bs = _check_batch(fn, batch_size) or CPU_BATCH
    if is_torch(x) and x.device.type == "cuda":
        import torch

        x, stream = _cuda_ready(fn, x)
        with torch.cuda.device(x.device):
            t = model._device_tables(x.device)
            N = x.shape[0]
            h = torch.empty((N, model.d), dtype=torch.float32, device=x.device)
            inv_s = torch.empty((N,), dtype=torch.float32, device=x.device)
            if N:
                _C.rotate(x, t.wt, t.bias, model.normalize, h, inv_s, stream=stream)
                _check_finite_cuda(fn, inv_s, 0, x)
        return h
    t = model._host_tables()
    get, N, _ = _cpu_source(fn, x)
    out = np.empty((N, model.d), dtype=np.float32)
    nt = _nthreads()
    for lo in range(0, N, bs):
        hi = min(N, lo + bs)
        out[lo:hi] = _rotate_cpu(fn, get(lo, hi), model, t, nt, lo, x)
    if is_torch(x):
        import torch

        return torch.from_numpy(out)
    return out


def decode(codes, model: Model, depth: int | None = None):
    """Reconstruction from the first ``depth`` stages: ``sum_{l < depth} C_l[codes[:, l]]``.

    Args:
        codes: ``[N, >= depth]`` integer array or tensor (as returned by :func:`assign_codes`).
        model: the :class:`hermes.Model` that produced the codes.
        depth: number of stages to sum (default: all columns of ``codes``).

    Returns:
        ``[N, d]`` float32 in the transformed space (compare it with :func:`transform`), numpy for numpy
        input, torch on the codes' device for torch input.
    """
    fn = "decode"
    model = _check_model(fn, model)
    depth = check_codes(fn, "codes", codes, model.levels, depth)
    if is_torch(codes):
        import torch

        t = model._device_tables(codes.device) if codes.device.type == "cuda" else None
        C = t.C if t is not None else [torch.from_numpy(c) for c in model._host_tables().C]
        idx = codes.long()
        out = torch.zeros((codes.shape[0], model.d), dtype=torch.float32, device=codes.device)
        for l in range(depth):
            out += C[l][idx[:, l]]
        return out
    C = model._host_tables().C
    out = np.zeros((codes.shape[0], model.d), dtype=np.float32)
    for l in range(depth):
        out += C[l][codes[:, l]]
    return out


def quantization_error(x, model: Model, *, depth: int | None = None, batch_size: int | None = None):
    """Per-row squared reconstruction error ``||h - decode(assign_codes(x))||^2`` with h = transform(x).

    Args:
        x: ``[N, d]`` as for :func:`assign_codes`.
        depth: stages used in the reconstruction (default: all L).

    Returns:
        ``[N]`` float32 (numpy, or torch on x's device).
    """
    fn = "quantization_error"
    model = _check_model(fn, model)
    check_matrix(fn, "x", x, model.d)
    depth = check_int(fn, "depth", model.L if depth is None else depth, 1, model.L)
    bs = _check_batch(fn, batch_size) or CPU_BATCH
    N = x.shape[0]
    parts = []
    for lo in range(0, max(N, 1), bs):
        xb = x[lo:lo + bs]
        try:
            h = transform(xb, model)
            rec = decode(assign_codes(xb, model), model, depth)
        except ValueError as e:  # name this function and the row of x, not of the batch
            m = _BAD_ROW.match(str(e))
            if not m:
                raise
            raise ValueError(f"{fn}: x row {lo + int(m.group(1))}{m.group(2)}") from None
        parts.append(((h - rec) ** 2).sum(1))
    if is_torch(x):
        import torch

        return torch.cat(parts) if parts else torch.zeros(0)
    return np.concatenate(parts).astype(np.float32)
