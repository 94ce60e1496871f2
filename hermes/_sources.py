"""Training data sources: the user's rows (numpy, memmap or torch) read lazily as float32 torch tensors,
an in-memory sample, and RVQ residuals recomputed from stored codes; plus the seeded random generators."""
from __future__ import annotations

import numpy as np

from ._validate import check_matrix, is_torch


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
