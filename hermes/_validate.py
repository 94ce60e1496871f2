"""Input validation at the package boundary: every message names the function and the argument."""
from __future__ import annotations

import operator

import numpy as np

FLOAT_NP = (np.float16, np.float32, np.float64)


def is_torch(x) -> bool:
    return type(x).__module__.startswith("torch") and hasattr(x, "device") and hasattr(x, "dtype")


def describe(x) -> str:
    if is_torch(x):
        return f"torch.Tensor(shape={tuple(x.shape)}, dtype={x.dtype}, device={x.device})"
    if isinstance(x, np.ndarray):
        return f"numpy.ndarray(shape={x.shape}, dtype={x.dtype})"
    return type(x).__name__


def check_matrix(fn: str, name: str, x, d: int | None = None):
    """Checks that x is a 2-d floating numpy array or torch tensor (with d columns when given)."""
    if is_torch(x):
        import torch

        ok_dtypes = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
        if x.dtype not in ok_dtypes:
            raise TypeError(f"{fn}: {name} must be a floating tensor (float32, float16, bfloat16), got {describe(x)}")
    elif isinstance(x, np.ndarray):
        if x.dtype.type not in FLOAT_NP:
            raise TypeError(f"{fn}: {name} must be a floating array (float32 or float16), got {describe(x)}")
    else:
        raise TypeError(f"{fn}: {name} must be a numpy array or a torch tensor, got {type(x).__name__}")
    if x.ndim != 2:
        raise ValueError(f"{fn}: {name} must be 2-d [N, d], got {x.ndim}-d {describe(x)}")
    if d is not None and x.shape[1] != d:
        raise ValueError(f"{fn}: {name} has dimension {x.shape[1]} but the model expects d={d} ({describe(x)})")
    return x


def check_finite_array(fn: str, name: str, a: np.ndarray) -> None:
    """Raises naming the first row (or element) of a that is NaN or Inf."""
    bad = ~np.isfinite(a)
    if bad.any():
        idx = np.argwhere(bad)[0]
        where = f"row {idx[0]}" if a.ndim >= 1 else "value"
        raise ValueError(f"{fn}: {name} contains NaN or Inf (first at {where}, index {tuple(int(i) for i in idx)})")


def to_numpy(a):
    """numpy view of ``a``; torch tensors go through ``.detach().cpu().numpy()`` (torch is never imported)."""
    if type(a).__module__.split(".")[0] == "torch":
        a = a.detach().cpu().numpy()
    return np.asarray(a)


def check_int(fn: str, name: str, value, lo: int | None = None, hi: int | None = None) -> int:
    """``value`` as a Python int within [lo, hi] (either bound optional).

    Raises TypeError for a bool, float or other non-integer, ValueError outside the range; both name
    the function and the argument.
    """
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{fn}: {name} must be an integer, got {value!r}")
    try:
        value = operator.index(value)
    except TypeError:
        raise TypeError(f"{fn}: {name} must be an integer, got {type(value).__name__} {value!r}") from None
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        if hi is not None:
            want = f"an integer in [{lo}, {hi}]" if lo is not None else f"an integer <= {hi}"
        else:
            want = "a positive integer" if lo == 1 else f"an integer >= {lo}"
        raise ValueError(f"{fn}: {name} must be {want}, got {value}")
    return int(value)


def check_metric(fn: str, metric) -> str:
    """The distance a quantizer assigns by: ``"cos"`` or ``"l2"``."""
    if metric not in ("cos", "l2"):
        raise ValueError(f"{fn}: metric must be 'cos' or 'l2', got {metric!r}")
    return metric


def check_codes(fn: str, name: str, codes, levels, depth: int | None = None) -> int:
    """Checks an integer code array ``[N, >= depth]`` (numpy or torch, any device) against the level
    sizes ``levels`` (K_1, ..., K_L): columns ``0 .. depth - 1`` must lie in ``[0, K_l)``.

    Returns depth (default: the number of columns). Errors name the first bad row and column.
    """
    L = len(levels)
    if is_torch(codes):
        if codes.dtype.is_floating_point or codes.dtype.is_complex or codes.dtype == __import__("torch").bool:
            raise TypeError(f"{fn}: {name} must be an integer tensor, got {describe(codes)}")
    elif isinstance(codes, np.ndarray):
        if not np.issubdtype(codes.dtype, np.integer):
            raise TypeError(f"{fn}: {name} must be an integer array, got {describe(codes)}")
    else:
        raise TypeError(f"{fn}: {name} must be a numpy array or a torch tensor, got {type(codes).__name__}")
    if codes.ndim != 2:
        raise ValueError(f"{fn}: {name} must be 2-d [N, L], got {describe(codes)}")
    depth = check_int(fn, "depth", codes.shape[1] if depth is None else depth, 1, L)
    if codes.shape[1] < depth:
        raise ValueError(f"{fn}: {name} has {codes.shape[1]} columns, fewer than depth={depth}")
    if codes.shape[0] == 0:
        return depth
    for level in range(depth):
        col = codes[:, level]
        bad = (col < 0) | (col >= levels[level])
        if bool(bad.any()):
            row = int(np.argmax(bad.cpu().numpy() if is_torch(bad) else bad))
            raise ValueError(
                f"{fn}: {name}[{row}, {level}] = {int(col[row])} is outside [0, {levels[level]}) "
                f"(levels[{level}] = {levels[level]}); first bad row {row}, column {level}"
            )
    return depth


def check_seed(fn: str, seed, *, generator_ok: bool = False):
    """A seed: an integer >= 0 (check_int's rules), or with generator_ok also a numpy Generator."""
    if generator_ok and isinstance(seed, np.random.Generator):
        return seed
    return check_int(fn, "seed", seed, 0)
