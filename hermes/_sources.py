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


_NORM_MAX = float(np.sqrt(np.finfo(np.float32).max))  # ~1.84e19: a larger norm's square overflows float32


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

    def check_all(self, rows: int = 1 << 14) -> None:
        """Reads every row of x once (block by block, in x's own dtype) and raises naming the first row that
        holds NaN or Inf, or whose float32 norm overflows: fit uses every row (samples included), and a
        model cannot label such a row either."""
        torch = _torch()
        for lo in range(0, self.N, rows):
            xb = self.x[lo:lo + rows]
            if self.torch_in:
                xb = xb.double() if xb.dtype in (torch.float16, torch.bfloat16) else xb
                fin = torch.isfinite(xb).all(dim=1).cpu().numpy()
                peak = xb.abs().amax(dim=1).double().cpu().numpy() if xb.shape[1] else np.zeros(xb.shape[0])
            else:
                fin = np.isfinite(xb).all(axis=1)
                peak = np.abs(xb).max(axis=1).astype(np.float64) if xb.shape[1] else np.zeros(xb.shape[0])
            bad = np.flatnonzero(~fin)
            if bad.size:
                raise ValueError(f"{self.fn}: x row {lo + int(bad[0])} contains NaN or Inf")
            big = np.flatnonzero(peak * np.sqrt(self.d) > _NORM_MAX / 2)  # candidates only: checked exactly below
            for r in big:
                v = np.asarray(self.x[lo + int(r)].double().cpu().numpy() if self.torch_in else self.x[lo + int(r)],
                               dtype=np.float64)
                top = float(np.abs(v).max())
                norm = top * float(np.linalg.norm(v / top))
                if norm >= _NORM_MAX:
                    raise ValueError(f"{self.fn}: x row {lo + int(r)} is finite but too large for float32: its norm "
                                     f"{norm:.3g} exceeds {_NORM_MAX:.3g}, whose square float32 cannot hold (largest "
                                     f"|value| {top:.3g}); scale the embeddings down")

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
