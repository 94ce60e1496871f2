"""An independent numpy float64 implementation of HERMES labeling, written from the math.

It rotates, normalizes, and for each stage computes every codeword's distance (l2) or cosine (cos) to the
explicit residual, takes the best (first index on ties), and subtracts that codeword. Nothing here is shared
with csrc/ or with hermes.assign: it is what the kernels are tested against.
"""
from __future__ import annotations

import numpy as np


def transform(x, W=None, b=None, normalize: bool = True) -> np.ndarray:
    """h = normalize(W x + b) for every row: ``x [N, d] -> h [N, d]`` float64 (zero rows stay zero)."""
    x = np.asarray(x, dtype=np.float64)
    h = x if W is None else x @ np.asarray(W, dtype=np.float64).T
    if b is not None:
        h = h + np.asarray(b, dtype=np.float64)
    if normalize:
        n = np.linalg.norm(h, axis=1, keepdims=True)
        h = np.divide(h, n, out=np.zeros_like(h), where=n > 0)
    return h


def stage_objective(r: np.ndarray, C: np.ndarray, metric: str) -> np.ndarray:
    """What a stage maximizes, ``[N, K]``: cos -> cos(r, c_k) (0 when r or c_k is zero); l2 -> -||r - c_k||^2."""
    r = np.asarray(r, dtype=np.float64)
    C = np.asarray(C, dtype=np.float64)
    if metric == "l2":
        diff = r[:, None, :] - C[None, :, :]
        return -np.einsum("nkd,nkd->nk", diff, diff)
    if metric == "cos":
        dots = r @ C.T
        denom = np.linalg.norm(r, axis=1)[:, None] * np.linalg.norm(C, axis=1)[None, :]
        return np.divide(dots, denom, out=np.zeros_like(dots), where=denom > 0)
    raise ValueError(f"reference.stage_objective: metric must be 'cos' or 'l2', got {metric!r}")


def residuals(x, codebooks, codes, W=None, b=None, normalize: bool = True) -> list:
    """The residual entering each stage given codes: a list of L arrays ``[N, d]`` (float64)."""
    r = transform(x, W, b, normalize)
    out = []
    for l, C in enumerate(codebooks):
        out.append(r)
        r = r - np.asarray(C, dtype=np.float64)[np.asarray(codes)[:, l]]
    return out


def assign(x, codebooks, W=None, b=None, metric: str = "cos", normalize: bool = True, chunk: int = 512):
    """Greedy residual quantization: codes ``[N, L]`` int64, first index on ties."""
    h = transform(x, W, b, normalize)
    codes = np.zeros((h.shape[0], len(codebooks)), dtype=np.int64)
    for lo in range(0, h.shape[0], chunk):
        r = h[lo:lo + chunk]
        for l, C in enumerate(codebooks):
            C = np.asarray(C, dtype=np.float64)
            c = np.argmax(stage_objective(r, C, metric), axis=1)  # argmax returns the first maximum
            codes[lo:lo + chunk, l] = c
            r = r - C[c]
    return codes


def decode(codes, codebooks, depth=None) -> np.ndarray:
    """sum over the first `depth` stages of the chosen codewords: ``[N, d]`` float64."""
    codes = np.asarray(codes)
    depth = codes.shape[1] if depth is None else depth
    out = np.zeros((codes.shape[0], np.asarray(codebooks[0]).shape[1]))
    for l in range(depth):
        out += np.asarray(codebooks[l], dtype=np.float64)[codes[:, l]]
    return out
