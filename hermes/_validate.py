"""Input validation at the package boundary: every message names the function and the argument."""
from __future__ import annotations

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


def check_codes(fn: str, name: str, codes, levels, depth: int | None = None):
    """Checks an integer code array [N, >= depth] against the level sizes; returns depth."""
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
    depth = codes.shape[1] if depth is None else depth
    if not isinstance(depth, (int, np.integer)) or not 1 <= depth <= L:
        raise ValueError(f"{fn}: depth must be an integer in [1, {L}], got {depth!r}")
    if codes.shape[1] < depth:
        raise ValueError(f"{fn}: {name} has {codes.shape[1]} columns, fewer than depth={depth}")
    for level in range(depth):
        col = codes[:, level]
        bad = (col < 0) | (col >= levels[level])
        if bool(bad.any()):
            row = int(np.argmax(bad.cpu().numpy() if is_torch(bad) else bad))
            raise ValueError(
                f"{fn}: {name}[{row}, {level}] = {int(col[row])} is out of range for level {level} "
                f"with {levels[level]} codewords"
            )
    return int(depth)


def check_seed(fn: str, seed, *, generator_ok: bool = False):
    """A seed: an integer >= 0 (bools and floats refused), or with generator_ok a numpy Generator."""
    if generator_ok and isinstance(seed, np.random.Generator):
        return seed
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)) or seed < 0:
        what = "an integer >= 0" + (" or a numpy Generator" if generator_ok else "")
        raise ValueError(f"{fn}: seed must be {what}, got {seed!r}")
    return int(seed)
