"""Re-readable streams of embedding rows over shards, for the passes of corpus-scale metrics.

``EmbeddingStream(shards)`` yields ``(row0, float32 [b, d])`` blocks in global row order (shard after shard),
as many times as asked, and ``take(rows)`` gathers a few rows. ``.npy`` shards are read with plain file
reads into one reused buffer (a memory map would count every page read in the process's RSS); other
shards go through their readers' ``batches``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["EmbeddingStream"]


def _npy_layout(path):
    """(data offset in bytes, shape, dtype, fortran_order) of a .npy file, from its header."""
    with open(path, "rb") as f:
        major, _ = np.lib.format.read_magic(f)
        if major not in (1, 2):
            return None
        read = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read(f)
        return f.tell(), shape, dtype, fortran


class EmbeddingStream:
    """Rows of one or more shards (opened by :func:`hermes.readers.open_shard`), in order.

    n: total rows; d: dimension. ``blocks(rows, keep=None)`` yields ``(row0, x)`` with x float32 ``[b, d]``
    (only the rows in the sorted global index array ``keep`` when given, then row0 is the position in
    ``keep``); ``take(rows)`` returns float32 ``[len(rows), d]`` for sorted global row indices.
    """

    def __init__(self, shards, fn: str = "EmbeddingStream"):
        shards = list(shards)
        ds = {s.d for s in shards if s.n}
        if len(ds) > 1:
            raise ValueError(f"{fn}: the embeddings have different dimensions: " +
                             ", ".join(f"{s.path} d={s.d}" for s in shards))
        self.shards, self.fn = shards, fn
        self.d = ds.pop() if ds else (shards[0].d if shards else 0)
        self.offsets = np.cumsum([0] + [s.n for s in shards])
        self.n = int(self.offsets[-1])
        self._npy = {}
        for i, s in enumerate(shards):
            if s.kind == "npy" and isinstance(s.path, Path):  # local files (not object storage)
                layout = _npy_layout(s.path)
                if layout is not None and not layout[3]:
                    off, _, dtype, _ = layout
                    self._npy[i] = (off, np.dtype(dtype))

    def _shard_blocks(self, i: int, rows: int):
        """(local row0, float32 [b, d]) blocks of shard i."""
        s = self.shards[i]
        if i in self._npy:
            off, dt = self._npy[i]
            row_bytes = dt.itemsize * s.d
            buf = np.empty((rows, s.d), dt)
            with open(s.path, "rb", buffering=0) as f:
                f.seek(off)
                for lo in range(0, s.n, rows):
                    b = min(rows, s.n - lo)
                    view = buf[:b]
                    got = f.readinto(memoryview(view).cast("B"))
                    if got != b * row_bytes:
                        raise ValueError(f"{self.fn}: {s.path} ended after row {lo + got // row_bytes} of {s.n} "
                                         f"(truncated?)")
                    yield lo, view.astype(np.float32)
            return
        for lo, x in s.batches(rows):
            yield lo, np.asarray(x, dtype=np.float32)

    def blocks(self, rows: int = 16384, keep: np.ndarray | None = None):
        out_row = 0
        for i, s in enumerate(self.shards):
            base = int(self.offsets[i])
            if keep is not None:
                lo_k, hi_k = np.searchsorted(keep, [base, base + s.n])
                if lo_k == hi_k:
                    continue
                mine = keep[lo_k:hi_k] - base
            for lo, x in self._shard_blocks(i, rows):
                if keep is None:
                    yield base + lo, x
                    continue
                a, b = np.searchsorted(mine, [lo, lo + x.shape[0]])
                if a < b:
                    yield out_row, x[mine[a:b] - lo]
                    out_row += b - a

    def locate(self, row: int) -> tuple:
        """(shard path, row within it) of global row ``row``."""
        i = int(np.searchsorted(self.offsets, row, side="right")) - 1
        return self.shards[i].path, int(row - self.offsets[i])

    def take(self, rows: np.ndarray) -> np.ndarray:
        """float32 [len(rows), d] for sorted global row indices (npy: direct reads; others: one pass)."""
        rows = np.asarray(rows, dtype=np.int64)
        out = np.empty((rows.size, self.d), np.float32)
        pos = 0
        for i, s in enumerate(self.shards):
            base = int(self.offsets[i])
            a, b = np.searchsorted(rows, [base, base + s.n])
            if a == b:
                continue
            mine = rows[a:b] - base
            if i in self._npy:
                off, dt = self._npy[i]
                row_bytes = dt.itemsize * s.d
                one = np.empty(s.d, dt)
                with open(s.path, "rb", buffering=0) as f:
                    for j, r in enumerate(mine):
                        f.seek(off + int(r) * row_bytes)
                        f.readinto(memoryview(one).cast("B"))
                        out[pos + j] = one
            else:
                for lo, x in s.batches(16384):
                    c, e = np.searchsorted(mine, [lo, lo + x.shape[0]])
                    if c < e:
                        out[pos + c:pos + e] = x[mine[c:e] - lo]
            pos += b - a
        return out

    @property
    def random_access(self) -> bool:
        """Every shard is a plain .npy file, so rows can be gathered in any order cheaply."""
        return len(self._npy) == len(self.shards) and self.n > 0

    def gather_blocks(self, order: np.ndarray, rows: int = 16384):
        """Yields ``(row ids int64 [b], [b, d])`` for consecutive chunks of the global row ids ``order``.

        Needs :attr:`random_access`. The rows come in the shards' dtype (float16 stays float16; shards of different
        dtypes give float32). Rows are read with ``pread`` (no memory map, so the process's RSS stays bounded by the
        chunk whatever order the rows are visited in), in C++ on torch's threads. Not ahead on another thread:
        that thread would preempt one of the caller's OpenMP GEMM threads, and the whole GEMM waits for the
        straggler (measured at 2M x 1024 on 2 cores: 124 s with a read-ahead thread, 78 s without). The kernel is told to read a file ahead
        (``POSIX_FADV_WILLNEED``) when it fits in half the available memory, else that access is random.
        """
        import os

        dts = {self._npy[i][1] for i, s in enumerate(self.shards) if s.n}
        dt = dts.pop() if len(dts) == 1 else np.dtype(np.float32)
        fds = []
        try:
            avail = _available_memory()
            for i, s in enumerate(self.shards):
                fd = os.open(s.path, os.O_RDONLY)
                fds.append(fd)
                if hasattr(os, "posix_fadvise") and s.n:
                    size = os.fstat(fd).st_size
                    advice = os.POSIX_FADV_WILLNEED if avail and size <= avail // 2 else os.POSIX_FADV_RANDOM
                    os.posix_fadvise(fd, 0, 0, advice)

            def read(lo):
                ids = np.asarray(order[lo:lo + rows], dtype=np.int64)
                sh = np.searchsorted(self.offsets, ids, side="right") - 1
                x = np.empty((ids.size, self.d), dt)
                for i in np.unique(sh):
                    sel = np.flatnonzero(sh == i)
                    x[sel] = self._pread_rows(i, fds[i], ids[sel] - self.offsets[i], dt)
                return ids, x

            for lo in range(0, order.size, rows):
                yield read(lo)
        finally:
            for fd in fds:
                os.close(fd)

    def _pread_rows(self, i: int, fd: int, local: np.ndarray, dt) -> np.ndarray:
        """Rows ``local`` (int64, within shard i) of a .npy shard, read with pread; in dtype dt."""
        from ._backend import _C

        off, src = self._npy[i]
        s = self.shards[i]
        row_bytes = src.itemsize * s.d
        buf = np.empty((local.size, s.d), src)
        from .assign import _nthreads

        short = _C.pread_rows_cpu(fd, off + local * row_bytes, row_bytes, buf, _nthreads())
        if short >= 0:
            raise ValueError(f"{self.fn}: {s.path} ended before row {int(local[short])} of {s.n} (truncated?)")
        return buf if src == dt else buf.astype(dt)


def _available_memory() -> int:
    """MemAvailable from /proc/meminfo in bytes, or 0 where it cannot be read."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0
