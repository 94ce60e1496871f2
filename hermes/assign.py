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
_DTYPE_CODE = {"torch.float32": 0, "torch.float16": 1, "torch.bfloat16": 2}


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
    """Returns (get_batch(lo, hi) -> float32 C-contiguous numpy, N) without copying the whole input.

    A batch is valid until the next get_batch call (float16 input is converted into one reused buffer).
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

            return get_bf16, x.shape[0]
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

        return get16, x.shape[0]
    return (lambda lo, hi: np.ascontiguousarray(x[lo:hi], dtype=np.float32)), x.shape[0]


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


# ------------------------------------------------------------------------------------------ CPU
PRECISIONS = ("auto", "fp32", "bf16")
_SCREEN_GIVE_UP = 32  # rescored codewords per row and level above which the fp32 GEMM is cheaper
_bf16_probe = None


def _bf16_gemm_accumulates_fp32() -> bool:
    """Probes torch's CPU bf16 GEMM once for the error bound the screen relies on (fp32 accumulation)."""
    global _bf16_probe
    if _bf16_probe is None:
        import torch

        g = torch.Generator().manual_seed(0)
        a, b = torch.randn(64, 1024, generator=g), torch.randn(1024, 64, generator=g)
        exact = a.double() @ b.double()
        approx = (a.bfloat16() @ b.bfloat16()).double()
        bound = 2.0 ** -8 * approx.abs() + (2.0 ** -7 + 2.0 ** -15 + 1024 * 2.0 ** -24) * (
            a.double().abs() @ b.double().abs())
        _bf16_probe = bool(((approx - exact).abs() <= bound).all())
    return _bf16_probe


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
    """Indices of the rows of C [K, d] equal to a lower-index row (int32, increasing): codewords that never win."""
    _, first = np.unique(C, axis=0, return_index=True)
    keep = np.zeros(len(C), dtype=bool)
    keep[first] = True
    return np.flatnonzero(~keep).astype(np.int32)


def _screen_tables(model: Model, t):
    """bf16 GEMM operand, M^T and the column norms (rounded up) for the screened CPU search, built once."""
    import torch

    if "M16" not in t.extra:
        up = lambda v: np.nextafter(v.astype(np.float32), np.float32(np.inf))  # noqa: E731  (round up)
        M16 = torch.from_numpy(t.M).to(torch.bfloat16)
        m16 = M16.double().numpy()
        dM = t.M.astype(np.float64) - m16  # exact: the bf16 rounding remainder of every entry
        t.extra["M16"] = M16
        t.extra["Mt"] = np.ascontiguousarray(t.M.T)
        t.extra["m16_norm"] = up(np.sqrt((m16 * m16).sum(0)))
        t.extra["dm_norm"] = up(np.sqrt((dM * dM).sum(0)))
        t.extra["betas"] = [t.beta[t.offsets[l]:t.offsets[l + 1]] for l in range(model.L)]
        t.extra["shadowed"] = [_duplicate_rows(np.asarray(C)) for C in model.codebooks]
    return t.extra


def _assign_cpu(fn, x, model: Model, batch_size, progress, precision="auto"):
    import torch

    t = model._host_tables()
    if precision == "bf16" and not _bf16_gemm_accumulates_fp32():
        raise RuntimeError(f"{fn}: precision='bf16' needs torch's CPU bf16 GEMM to accumulate in fp32, and a probe "
                           "says this torch/CPU does not; use precision='fp32' or 'auto'")
    screen = t.folded and (precision == "bf16" or (precision == "auto" and _cpu_has_fast_bf16()))
    st = _screen_tables(model, t) if screen else None
    get, N = _cpu_source(fn, x)
    L, metric, nt = model.L, METRICS[model.metric], _nthreads()
    codes = np.zeros((N, L), dtype=np.int32)
    M = torch.from_numpy(t.M)
    B = min(batch_size, max(N, 1))
    # Scratch reused across batches (fresh pages per batch cost page faults comparable to the epilogue).
    inv_buf = np.empty(B, dtype=np.float32)
    x16_buf = np.empty((B, model.d), dtype=np.int16) if screen else None
    xn_buf, dxn_buf = (np.empty(B, dtype=np.float32), np.empty(B, dtype=np.float32)) if screen else (None, None)
    g16_buf = torch.empty((B, M.shape[1]), dtype=torch.bfloat16) if screen else None
    with _progress(N, progress, "assign_codes") as bar:
        for lo in range(0, N, batch_size):
            hi = min(N, lo + batch_size)
            xb = get(lo, hi)
            cb = codes[lo:hi]
            if t.folded:
                inv_s = inv_buf[:hi - lo]
                if screen:
                    x16 = x16_buf[:hi - lo]
                    xn, dxn = xn_buf[:hi - lo], dxn_buf[:hi - lo]
                    bad = _C.row_norms_bf16_cpu(xb, t.wtb, t.bb, model.normalize, inv_s, x16, xn, dxn, nt)
                else:
                    bad = _C.row_norms_cpu(xb, t.wtb, t.bb, model.normalize, inv_s, nt)
                if bad >= 0:
                    _raise_bad_row(fn, lo + bad, x)
                if screen:
                    g16 = torch.mm(torch.from_numpy(x16).view(torch.bfloat16), st["M16"], out=g16_buf[:hi - lo])
                    rescored = _C.assign_screened_cpu(
                        g16.view(torch.int16).numpy(), xb, st["Mt"], st["m16_norm"], st["dm_norm"], t.offsets[:-1],
                        list(model.levels), metric, st["betas"], t.cterm, t.T, inv_s, xn, dxn, cb, st["shadowed"], nt)
                    if precision == "auto" and rescored > _SCREEN_GIVE_UP * (hi - lo) * L:
                        screen = False  # scores too close for the bf16 screen on this data: fp32 from now on
                else:
                    g = torch.mm(_tensor(xb), M).numpy()
                    for l, K in enumerate(model.levels):
                        o = t.offsets[l]
                        _C.argmin_level_cpu(g, o, K, l, metric, t.beta[o:o + K], t.cterm[l], t.T[l], inv_s, cb, nt)
            else:
                r = _rotate_cpu(fn, xb, model, t, nt, lo, x)
                rt = torch.from_numpy(r)
                for l, K in enumerate(model.levels):
                    o = t.offsets[l]
                    g = torch.mm(rt, torch.from_numpy(t.Ct[:, o:o + K])).numpy()
                    _C.argmin_level_cpu(g, 0, K, l, metric, None, t.cterm[l], [], None, cb, nt)
                    if l + 1 < L:
                        _C.subtract_codeword_cpu(r, t.C[l], cb, l, nt)
            bar.update(hi - lo)
    return codes


def _rotate_cpu(fn, xb: np.ndarray, model: Model, t, nt: int, row0: int, x=None) -> np.ndarray:
    """h = normalize(x W^T + b) for one float32 batch [B, d] (a new array)."""
    import torch

    if model.W is None:
        h = xb + t.bias if model.b is not None else xb.copy()
    else:
        h = torch.addmm(torch.from_numpy(t.bias), _tensor(xb), torch.from_numpy(t.wt)).numpy()
    bad = _C.normalize_rows_cpu(h, model.normalize, nt)
    if bad >= 0:
        _raise_bad_row(fn, row0 + bad, x)
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
    return x, _DTYPE_CODE[str(x.dtype)], torch.cuda.current_stream(x.device).cuda_stream


def _check_finite_cuda(fn: str, inv_s, row0: int = 0, x=None):
    import torch

    bad = ~torch.isfinite(inv_s)
    if bool(bad.any()):  # one device sync per call
        _raise_bad_row(fn, row0 + int(torch.nonzero(bad)[0, 0]), x)


def _rotate_cuda(x, dtype_code, n, ldx, model, t, stream, h, inv_s):
    d = model.d
    _C.affine_cuda(x.data_ptr(), dtype_code, n, d, ldx, t.wt.data_ptr(), t.bias.data_ptr(), h.data_ptr(), stream)
    _C.normalize_rows_cuda(h.data_ptr(), n, d, d, model.normalize, inv_s.data_ptr(), stream)


def _assign_cuda(fn, x, model: Model, batch_size, check_finite: bool):
    import torch

    x, dt, stream = _cuda_ready(fn, x)
    with torch.cuda.device(x.device):
        t = model._device_tables(x.device)
        N, d, L = x.shape[0], model.d, model.L
        metric = METRICS[model.metric]
        codes = torch.empty((N, L), dtype=torch.int32, device=x.device)
        inv_s = torch.empty((N,), dtype=torch.float32, device=x.device)
        if N == 0:
            return codes
        ldx = x.stride(0)
        if t.folded:
            _C.row_norms_cuda(x.data_ptr(), dt, N, d, ldx, t.wtb.data_ptr(), t.bb, model.normalize,
                              inv_s.data_ptr(), stream)
            for l, K in enumerate(model.levels):
                o = t.offsets[l]
                _C.gemm_argmin_cuda(x.data_ptr(), dt, N, d, ldx, t.M.data_ptr() + 4 * o, t.M.stride(0), K, l, L,
                                    metric, t.beta.data_ptr() + 4 * o, t.cterm[l].data_ptr(),
                                    [m.data_ptr() for m in t.T[l]], inv_s.data_ptr(), codes.data_ptr(), stream)
        else:
            bs = batch_size
            h = torch.empty((min(N, bs), d), dtype=torch.float32, device=x.device)
            for lo in range(0, N, bs):
                n = min(N, lo + bs) - lo
                cp = codes.data_ptr() + lo * L * 4
                _rotate_cuda(x[lo:lo + n], dt, n, ldx, model, t, stream, h, inv_s[lo:lo + n])
                for l, K in enumerate(model.levels):
                    o = t.offsets[l]
                    _C.gemm_argmin_cuda(h.data_ptr(), 0, n, d, d, t.Ct.data_ptr() + 4 * o, t.Ct.stride(0), K, l, L,
                                        metric, 0, t.cterm[l].data_ptr(), [], 0, cp, stream)
                    if l + 1 < L:
                        _C.subtract_codeword_cuda(h.data_ptr(), n, d, d, t.C[l].data_ptr(), cp, L, l, stream)
        if check_finite:
            _check_finite_cuda(fn, inv_s, 0, x)
    return codes


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
        precision: CPU fused path only. ``"fp32"``: one fp32 GEMM. ``"bf16"``: a bf16 GEMM screens the
            codewords with a rigorous error bound and only the codewords that can still win are rescored
            exactly in fp32, so the codes are those of an fp32 search (up to fp32 near-ties), not of a bf16
            one. ``"auto"`` (default): bf16 screening where the CPU multiplies bf16 natively (AVX512-BF16/AMX)
            and a probe confirms torch's bf16 GEMM accumulates in fp32; it falls back to fp32 for the rest
            of the call when the data leaves too many candidates (more than 32 per row and level).

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
        return _assign_cuda(fn, x, model, bs or CUDA_BATCH, check_finite)
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

        x, dt, stream = _cuda_ready(fn, x)
        with torch.cuda.device(x.device):
            t = model._device_tables(x.device)
            N = x.shape[0]
            h = torch.empty((N, model.d), dtype=torch.float32, device=x.device)
            inv_s = torch.empty((N,), dtype=torch.float32, device=x.device)
            if N:
                _rotate_cuda(x, dt, N, x.stride(0), model, t, stream, h, inv_s)
                _check_finite_cuda(fn, inv_s, 0, x)
        return h
    t = model._host_tables()
    get, N = _cpu_source(fn, x)
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
