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


def _dist():
    """(torch.distributed, rank, world) when a process group is initialized, else (None, 0, 1)."""
    torch = _torch()
    d = torch.distributed
    if d.is_available() and d.is_initialized():
        return d, d.get_rank(), d.get_world_size()
    return None, 0, 1


class _Source:
    """Rows of the user's x as float32 torch tensors on ``device``, checked for NaN/Inf, read lazily.

    x is a numpy array (a memmap is read by rows), a torch tensor, a :class:`hermes.readers.ShardArray` (read
    by rows, like a memmap) or a :class:`hermes.readers.RowPartition` (this DDP rank's rows [lo, hi) of the
    input, in memory). Rows are numbered globally (0 to N - 1) in every case; ``part`` is (lo, hi, bounds)
    for a partition (rows outside [lo, hi) are on other ranks: :func:`_gather_rows`), else None.
    """

    def __init__(self, fn: str, x, device):
        torch = _torch()
        from .readers import RowPartition, ShardArray

        self.fn, self.input, self.part = fn, x, None
        if isinstance(x, RowPartition):
            check_matrix(fn, "x", x.data)
            self.part = (x.lo, x.hi, x.bounds)
            self.x, self.N, self.d = x.data, x.N, x.d
        elif isinstance(x, ShardArray):
            self.x, (self.N, self.d) = x, x.shape
        else:
            check_matrix(fn, "x", x)
            self.x = x
            self.N, self.d = int(x.shape[0]), int(x.shape[1])
        self.lazy = isinstance(x, (np.memmap, ShardArray))  # rows are read from disk when asked for
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

    @property
    def rows_read(self):
        """Input rows materialized so far by a ShardArray / RowPartition input (None for arrays and tensors)."""
        return getattr(self.input, "rows_read", None)

    def own_rows(self, rank: int, world: int) -> tuple[int, int]:
        """The global rows [lo, hi) that DDP rank ``rank`` of ``world`` checks: its partition, else its
        contiguous 1/world of the rows."""
        if self.part is not None:
            lo, hi, bounds = self.part
            if len(bounds) - 1 != world:
                raise ValueError(f"{self.fn}: x is a partition for {len(bounds) - 1} ranks, but the process group "
                                 f"has {world}; open the input under the same process group")
            return lo, hi
        return rank * self.N // world, (rank + 1) * self.N // world

    def _local(self, idx):
        """Positions in self.x of the global rows idx (a partition holds rows [lo, hi) only)."""
        if self.part is None:
            return idx
        lo, hi, _ = self.part
        if isinstance(idx, slice):
            a, b = idx.start - lo, idx.stop - lo
            ok = 0 <= a <= b <= hi - lo
            idx = slice(a, b)
        else:
            idx = np.asarray(idx) - lo
            ok = not idx.size or (idx.min() >= 0 and idx.max() < hi - lo)
        if not ok:
            raise IndexError(f"{self.fn}: rows outside this rank's partition [{lo}, {hi}) were asked for")
        return idx

    def _check(self, t, rows):
        torch = _torch()
        ok = torch.isfinite(t).all(dim=1)
        if not bool(ok.all()):
            r = int(torch.nonzero(~ok)[0, 0])
            row = int(rows[r]) if rows is not None else r
            raise ValueError(f"{self.fn}: x row {row} contains NaN or Inf")
        return t

    def check_all(self, lo: int = 0, hi: int | None = None, rows: int = 1 << 14) -> None:
        """Reads every row of x in [lo, hi) (default: all) once (block by block, in x's own dtype) and raises
        naming the first (global) row that holds NaN or Inf, or whose float32 norm overflows: fit uses every
        row (samples included), and a model cannot label such a row either. Under DDP each rank checks its
        own rows (:meth:`own_rows`)."""
        torch = _torch()
        hi = self.N if hi is None else hi
        off = 0
        if self.part is not None:  # positions in the partition; messages name the global row off + position
            r = self._local(slice(lo, hi))
            off, lo, hi = lo - r.start, r.start, r.stop
        for lo in range(lo, hi, rows):
            xb = self.x[lo:min(hi, lo + rows)]
            if self.torch_in:
                xb = xb.double() if xb.dtype in (torch.float16, torch.bfloat16) else xb
                fin = torch.isfinite(xb).all(dim=1).cpu().numpy()
                peak = xb.abs().amax(dim=1).double().cpu().numpy() if xb.shape[1] else np.zeros(xb.shape[0])
            else:
                fin = np.isfinite(xb).all(axis=1)
                peak = np.abs(xb).max(axis=1).astype(np.float64) if xb.shape[1] else np.zeros(xb.shape[0])
            bad = np.flatnonzero(~fin)
            if bad.size:
                raise ValueError(f"{self.fn}: x row {off + lo + int(bad[0])} contains NaN or Inf")
            big = np.flatnonzero(peak * np.sqrt(self.d) > _NORM_MAX / 2)  # candidates: checked exactly below
            for r in big:
                v = np.asarray(self.x[lo + int(r)].double().cpu().numpy() if self.torch_in else self.x[lo + int(r)],
                               dtype=np.float64)
                top = float(np.abs(v).max())
                norm = top * float(np.linalg.norm(v / top))
                if norm >= _NORM_MAX:
                    raise ValueError(f"{self.fn}: x row {off + lo + int(r)} is finite but too large for float32: "
                                     f"its norm {norm:.3g} exceeds {_NORM_MAX:.3g}, whose square float32 cannot hold "
                                     f"(largest |value| {top:.3g}); scale the embeddings down")

    def slice(self, lo: int, hi: int):
        torch = _torch()
        if self.torch_in:
            t = self.x[lo:hi].to(device=self.device, dtype=torch.float32)
        else:
            t = torch.from_numpy(_writable(self.x[self._local(slice(lo, hi))])).to(self.device)
        return self._check(t, np.arange(lo, hi))

    def rows(self, idx: np.ndarray):
        """Rows ``idx`` (sorted ascending for memmap locality) in that order."""
        torch = _torch()
        if self.torch_in:
            t = self.x[torch.from_numpy(idx).to(self.x.device)].to(device=self.device, dtype=torch.float32)
        else:
            t = torch.from_numpy(_writable(self.x[self._local(idx)])).to(self.device)
        return self._check(t, idx)


def _gather_rows(src: _Source, sel: np.ndarray, dst: int | None = None):
    """Rows ``sel`` (sorted global ids) [len(sel), d] of src, on rank ``dst`` (None: on every rank).

    A partitioned src (collective: every rank calls this) sends each rank's rows of sel to dst (padded to
    equal sizes for gather / all_gather); the pieces follow in rank order, which is sel's order because the
    partitions are ascending. Other sources read the rows themselves: call this on dst only, or on every rank
    when dst is None. Ranks other than dst get None.
    """
    torch = _torch()
    dist, rank, world = _dist()
    if src.part is None or dist is None:
        return src.rows(sel)
    lo, hi, bounds = src.part
    cuts = np.searchsorted(sel, bounds)
    counts = np.diff(cuts)
    piece = src.rows(sel[cuts[rank]:cuts[rank + 1]])
    pad = int(counts.max()) if counts.size else 0
    buf = torch.zeros((pad, src.d), dtype=piece.dtype, device=piece.device)
    buf[:piece.shape[0]] = piece
    if dst is None or rank == dst:
        out = [torch.empty_like(buf) for _ in range(world)]
    if dst is None:
        dist.all_gather(out, buf)
    else:
        dist.gather(buf, out if rank == dst else None, dst=dst)
        if rank != dst:
            return None
    return torch.cat([o[:int(c)] for o, c in zip(out, counts)])


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
