"""Embedding shard readers: one file of ``[N, d]`` float embeddings -> batches of rows, in bounded memory.

Formats (chosen by the file's extension, see :data:`READERS`):

- ``.npy``: memory-mapped, read batch by batch;
- ``.safetensors``: one 2-d tensor, or the one named by ``tensor=`` (read by slices, bf16 included);
- ``.parquet``: a ``list`` / ``large_list`` / ``fixed_size_list`` float column (``column=``), read in
  record batches; each batch becomes a 2-d array through the flattened child values (no Python loop).

Every reader is a :class:`Shard`: it checks the file when opened (only headers and footers are read) and
then yields ``(row0, array [b, d])`` from ``batches(batch_size)``. Consumers identify a shard through
``name`` / ``stem`` / ``source`` (strings), not through file-system calls, so a reader for another storage
(e.g. a pyarrow filesystem) only has to fill in those attributes and ``batches``.
"""
from __future__ import annotations

import functools
import itertools
import os
import threading
from pathlib import Path
from typing import Iterator

import numpy as np

__all__ = ["Shard", "NpyShard", "SafetensorsShard", "ParquetShard", "READERS", "SUFFIXES", "DEFAULT_BATCH",
           "open_shard", "expand_inputs", "read_embeddings", "open_fit_input", "ShardArray", "RowPartition"]

SUFFIXES = (".npy", ".safetensors", ".parquet")
DEFAULT_BATCH = 65536


FINGERPRINT_PREFIX = "b3-"


def content_hasher(like: str | None = None):
    """(hash object, prefix) of the content fingerprint: BLAKE3 (0.16 s per 410 MB here against 0.29 s for
    SHA-256, which every labeling run pays before its first row); SHA-256 with no prefix where ``like`` is a
    fingerprint recorded by hermes before BLAKE3 (32 hex digits), so a rerun still recognizes those inputs."""
    if like is not None and not like.startswith(FINGERPRINT_PREFIX):
        import hashlib

        return hashlib.sha256(), ""
    import blake3

    return blake3.blake3(), FINGERPRINT_PREFIX


class Shard:
    """One input shard: ``n`` rows of dimension ``d``; ``batches(bs)`` yields (row0, float array [b, d]).

    ``name`` is the file name (``stem`` without its extension) and ``source`` the shard's full, stable
    location (an absolute path here), which the label writer records in its outputs.
    """

    kind = ""

    def __init__(self, path: Path):
        self.path = path
        self.name = path.name
        self.stem = path.stem
        self.source = str(path.resolve())
        self.n = 0
        self.d = 0
        self.dtype = ""

    def batches(self, batch_size: int) -> Iterator[tuple[int, np.ndarray]]:  # pragma: no cover - abstract
        raise NotImplementedError

    def identity(self) -> list:
        """[size, mtime_ns, inode] of the file: while it is unchanged, a recorded :meth:`fingerprint` holds."""
        st = os.stat(self.path)
        return [int(st.st_size), int(st.st_mtime_ns), int(st.st_ino)]

    def fingerprint(self, like: str | None = None) -> str:
        """The content fingerprint the label writer records, so a rerun recognizes its inputs by content, never
        by file name: ``"b3-"`` + the first 32 hex digits of the BLAKE3 hash of the file's bytes (see
        :func:`content_hasher`; ``like``: a recorded fingerprint to compare with)."""
        buf = bytearray(1 << 20)  # one reused buffer: hashing a shard adds nothing to the resident memory
        view = memoryview(buf)
        h, prefix = content_hasher(like)
        with open(self.path, "rb", buffering=0) as f:
            while n := f.readinto(buf):
                h.update(view[:n])
        return prefix + h.hexdigest()[:32]

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r}, n={self.n}, d={self.d}, dtype={self.dtype})"


class NpyShard(Shard):
    """A ``.npy`` file, memory-mapped. Resident memory stays bounded by about one batch whatever the file's
    size: the pages behind the cursor are released (``madvise(MADV_DONTNEED)``: the data stays in the page
    cache, but no longer counts in this process's RSS, which worker memory monitors such as Ray's watch),
    and the next batch's pages are requested ahead (``MADV_WILLNEED``). Reading into reused buffers instead
    (``readinto`` / ``os.preadv``) was measured at 0.6-0.75x the rows/s of the mapping (an extra copy of
    every byte), so the mapping is kept."""

    kind = "npy"

    def __init__(self, fn: str, path: Path, **_options):
        super().__init__(path)
        try:
            x = np.load(path, mmap_mode="r", allow_pickle=False)
        except Exception as e:
            raise ValueError(f"{fn}: {path} is not a readable .npy file (truncated or corrupted?): {e}") from None
        if x.dtype.kind != "f":
            raise ValueError(f"{fn}: {path} holds {x.dtype} values; embeddings must be float16/32/64")
        if x.ndim != 2:
            raise ValueError(f"{fn}: {path} holds a {x.ndim}-d array of shape {x.shape}; embeddings must be "
                             f"2-d [N, d]")
        self.mm, self.offset = None, 0
        if isinstance(x, np.memmap) and x.size:  # our own mapping: np.memmap keeps its mmap object private
            import mmap

            with open(path, "rb") as f:
                self.mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
            self.offset = x.offset
            x = np.ndarray(x.shape, x.dtype, buffer=self.mm, offset=x.offset,
                           order="F" if x.flags.f_contiguous and not x.flags.c_contiguous else "C")
        self.x, (self.n, self.d), self.dtype = x, x.shape, str(x.dtype)

    def _advise(self, option: str, lo: int, hi: int) -> None:
        """madvise(option) on the pages holding rows [lo, hi) (a no-op where the platform has no madvise)."""
        import mmap

        if self.mm is None or not hasattr(mmap, option) or hi <= lo:
            return
        if not self.x.flags.c_contiguous:  # Fortran order: every row range spans the whole file
            lo, hi = 0, self.n
        off, row = self.offset, self.d * self.x.itemsize
        a = (off + lo * row) // mmap.PAGESIZE * mmap.PAGESIZE
        b = min(off + hi * row, len(self.mm))
        if b > a:
            self.mm.madvise(getattr(mmap, option), a, b - a)

    def batches(self, batch_size):
        for lo in range(0, self.n, batch_size):
            hi = min(lo + batch_size, self.n)
            self._advise("MADV_WILLNEED", hi, hi + batch_size)  # read ahead while this batch is labeled
            # A read-only view of the mapping: the consumers only read it (assign_codes converts or reads it
            # in place; the CUDA pipeline copies it into pinned memory), so no extra copy of every batch.
            yield lo, self.x[lo:hi]
            self._advise("MADV_DONTNEED", lo, hi)  # the consumer asked for the next batch: done with this one

    def close(self):
        self.x = None
        if self.mm is not None:
            try:
                self.mm.close()
            except BufferError:  # a caller still holds a view of the mapping (read_embeddings returns it)
                pass
            self.mm = None


class SafetensorsShard(Shard):
    kind = "safetensors"
    _DTYPES = {"F16": "float16", "BF16": "bfloat16", "F32": "float32", "F64": "float64"}

    def __init__(self, fn: str, path: Path, *, tensor: str | None = None, **_options):
        super().__init__(path)
        from safetensors import safe_open

        try:
            self.f = safe_open(str(path), framework="pt")
            names = list(self.f.keys())
        except Exception as e:
            raise ValueError(f"{fn}: {path} is not a readable .safetensors file (truncated or corrupted?): "
                             f"{e}") from None
        if tensor is None:
            two_d = [k for k in names if len(self.f.get_slice(k).get_shape()) == 2]
            if len(two_d) != 1:
                raise ValueError(f"{fn}: {path} holds {len(two_d)} 2-d tensors {two_d[:8]}; name the embeddings "
                                 f"with tensor= (CLI: --tensor)")
            tensor = two_d[0]
        elif tensor not in names:
            raise ValueError(f"{fn}: {path} has no tensor {tensor!r} (tensors: {names[:8]})")
        self.slice = self.f.get_slice(tensor)
        shape, dt = self.slice.get_shape(), self.slice.get_dtype()
        if dt not in self._DTYPES:
            raise ValueError(f"{fn}: {path}: tensor {tensor!r} has dtype {dt}; embeddings must be F16, BF16, F32 "
                             f"or F64")
        if len(shape) != 2:
            raise ValueError(f"{fn}: {path}: tensor {tensor!r} has shape {shape}; embeddings must be 2-d [N, d]")
        (self.n, self.d), self.dtype, self.tensor = shape, self._DTYPES[dt], tensor

    def batches(self, batch_size):
        import torch

        for lo in range(0, self.n, batch_size):
            t = self.slice[lo:lo + batch_size]
            yield lo, (t.float() if t.dtype == torch.bfloat16 else t).numpy()

    def close(self):
        self.slice = self.f = None


_NP_OF_ARROW = {"halffloat": np.float16, "float": np.float32, "double": np.float64, "int32": np.int32,
                "int64": np.int64}


def _np_view(arr) -> np.ndarray:
    """A pyarrow numeric array -> numpy, read-only and zero-copy on arrow's buffer where it has no nulls (what
    ``to_numpy`` gives too, except that ``to_numpy(zero_copy_only=False)`` imports pandas on first use, 0.4 s of
    every labeling process); with nulls, ``to_numpy``'s copy."""
    dt = _NP_OF_ARROW.get(str(arr.type))
    if dt is None or arr.null_count:
        return arr.to_numpy(zero_copy_only=False)
    dt = np.dtype(dt)
    return np.frombuffer(arr.buffers()[1], dtype=dt, count=len(arr), offset=arr.offset * dt.itemsize)


def _list_to_matrix(fn: str, arr, where: str, row0: int, d_expected: int | None = None) -> np.ndarray:
    """A pyarrow list / fixed-size-list array of floats -> numpy [n, d], via the flattened values.

    ``row0`` is the shard row of ``arr[0]`` (for messages); ``d_expected`` the dimension every row must have.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    n = len(arr)
    if arr.null_count:
        row = int(np.flatnonzero(arr.is_null().to_numpy(zero_copy_only=False))[0])
        raise ValueError(f"{fn}: {where}: row {row0 + row} is null")
    if pa.types.is_fixed_size_list(arr.type):
        d = arr.type.list_size
    else:
        lengths = _np_view(pc.list_value_length(arr))
        d = d_expected if d_expected is not None else (int(lengths[0]) if n else 0)
        if n and (lengths != d).any():
            row = int(np.flatnonzero(lengths != d)[0])
            raise ValueError(f"{fn}: {where}: row {row0 + row} has {lengths[row]} values, row 0 has {d}; "
                             f"every embedding must have the same dimension")
    values = arr.flatten()
    if values.null_count:
        bad = int(np.flatnonzero(values.is_null().to_numpy(zero_copy_only=False))[0])
        raise ValueError(f"{fn}: {where}: row {row0 + bad // max(d, 1)} contains a null value")
    # Read-only when zero-copy (arrow memory): the consumers only read it (assign_codes, the CUDA pipeline's
    # pinned copy), and torch views of it are made without the non-writable warning (assign._tensor).
    return _np_view(values).reshape(n, d)


class ParquetShard(Shard):
    """A parquet file's list / fixed-size-list float column, decoded on background threads.

    pyarrow decodes nested list columns value by value (repetition and definition levels), so decoding
    often sets the pace (where the assignment is fast: AMX, GPUs); pyarrow releases the GIL, so the decode runs on worker threads while the
    consumer labels the previous batch. A file of several row groups, each at most
    ``4 * batch_size`` rows, has its row groups decoded in parallel (``pyarrow.cpu_count()`` threads, at
    most :data:`PARQUET_AHEAD_BYTES` decoded ahead); otherwise one thread streams record batches
    of at most ``batch_size`` rows and :data:`PARQUET_STREAM_BYTES` (so batches may be smaller than asked), one
    batch ahead, through an 8 MiB read buffer. (Labeling a 200k x 1024 file of one row group peaked at 0.52-0.65
    GB RSS this way, against 1.35-1.9 GB with 65,536-row record batches.)
    """

    kind = "parquet"

    def __init__(self, fn: str, path: Path, *, column: str = "embedding", **_options):
        super().__init__(path)
        import pyarrow as pa

        self.fn, self.column = fn, column
        try:
            self.pf = self._open()
            schema = self.pf.schema_arrow
        except Exception as e:
            raise ValueError(f"{fn}: {path} is not a readable parquet file (truncated or corrupted?): {e}") from None
        if column not in schema.names:
            raise ValueError(f"{fn}: {path} has no column {column!r} (columns: {schema.names[:12]}); "
                             f"set column= (CLI: --column)")
        t = schema.field(column).type
        if not (pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)) \
                or not pa.types.is_floating(t.value_type):
            raise ValueError(f"{fn}: {path}: column {column!r} has type {t}; embeddings must be a list or "
                             f"fixed-size list of floats")
        self.n, self.dtype = self.pf.metadata.num_rows, str(t.value_type).replace("halffloat", "float16")
        self.dtype = {"float": "float32", "double": "float64"}.get(self.dtype, self.dtype)
        if pa.types.is_fixed_size_list(t):
            self.d = t.list_size
        elif self.n:
            # streamed: a pre-buffered reader would fetch (and the allocator keep) the whole first column chunk
            first = next(self._open(metadata=self.pf.metadata, stream=True).iter_batches(batch_size=1,
                                                                                        columns=[column]))
            self.d = _list_to_matrix(fn, first.column(0), f"{path}, column {column!r}", 0).shape[1]
        md = self.pf.metadata
        self.row_groups = [md.row_group(i).num_rows for i in range(md.num_row_groups)]

    def _open(self, metadata=None, stream: bool = False):
        """A new ``pyarrow.parquet.ParquetFile`` on this shard (one per thread: readers are not shared).

        ``stream``: read pages through an 8 MiB buffer instead of whole column chunks at once.
        """
        import pyarrow.parquet as pq

        if stream:
            return pq.ParquetFile(self.path, metadata=metadata, buffer_size=8 << 20, pre_buffer=False)
        return pq.ParquetFile(self.path, metadata=metadata)

    def batches(self, batch_size):
        import pyarrow as pa

        where = f"{self.path}, column {self.column!r}"
        starts = np.concatenate([[0], np.cumsum(self.row_groups, dtype=np.int64)])
        parallel = len(self.row_groups) > 1 and max(self.row_groups) <= 4 * batch_size
        lo = 0
        try:
            if parallel:
                workers = max(1, min(pa.cpu_count(), 16))
                rg_bytes = max(self.row_groups) * max(self.d, 1) * 4
                depth = max(1, min(workers + 1, PARQUET_AHEAD_BYTES // max(rg_bytes, 1)))
                local = threading.local()
                md = self.pf.metadata

                def read_group(i):
                    if getattr(local, "pf", None) is None:
                        local.pf = self._open(metadata=md)
                    t = local.pf.read_row_group(i, columns=[self.column], use_threads=False)
                    return _list_to_matrix(self.fn, t.column(0), where, int(starts[i]), self.d)

                parts = _read_ahead((functools.partial(read_group, i) for i in range(len(self.row_groups))),
                                    workers=min(workers, depth), depth=depth)
                for x in parts:
                    for a in range(0, x.shape[0], batch_size):
                        yield lo, x[a:a + batch_size]
                        lo += min(batch_size, x.shape[0] - a)
            else:
                # Record batches of at most PARQUET_STREAM_BYTES (as float32), fewer rows than batch_size when
                # that is large: the decode of the next batch overlaps the consumer's work on this one, and
                # large batches left the first decode and the last assignment with nothing to overlap
                # (200k rows, one row group, 2-core Zen 4: 65,536-row batches took 1.6-2x the time of 8,192).
                step = max(1, min(batch_size, PARQUET_STREAM_BYTES // (4 * max(self.d, 1))))
                it = self._open(metadata=self.pf.metadata, stream=True).iter_batches(
                    batch_size=step, columns=[self.column])
                done = object()
                row = [0]

                def next_batch():
                    rb = next(it, done)
                    if rb is done:
                        return done
                    x = _list_to_matrix(self.fn, rb.column(0), where, row[0], self.d)
                    row[0] += x.shape[0]
                    return x

                for x in _read_ahead(itertools.repeat(next_batch), workers=1, depth=1):
                    if x is done:
                        break
                    yield lo, x
                    lo += x.shape[0]
        except (OSError, ValueError) as e:
            if str(e).startswith(f"{self.fn}:"):
                raise
            raise ValueError(f"{self.fn}: {self.path} could not be read near row {lo} (corrupted?): {e}") from None
        if lo != self.n:
            raise ValueError(f"{self.fn}: {self.path} yielded {lo} rows, its footer says {self.n} (corrupted?)")

    def close(self):
        self.pf = None


PARQUET_STREAM_BYTES = 32 << 20
"""A file read as a stream (one row group, or row groups larger than 4 batches) is decoded in record batches of
at most this many float32 bytes (8,192 rows at d = 1024), whatever the consumer's batch size."""

PARQUET_AHEAD_BYTES = 512 << 20
"""Decoded parquet row groups held ahead of the consumer, at most (float32 bytes; at least one group)."""


def _read_ahead(jobs, *, workers: int, depth: int):
    """Runs the callables ``jobs`` on ``workers`` threads, at most ``depth`` of them ahead of the consumer, and
    yields their results in order (a job's exception is raised at its place). With one worker the jobs run one
    after another, in order. When the consumer stops early, the jobs not yet started are cancelled and the
    running ones finish before this returns."""
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    jobs = iter(jobs)
    pending: deque = deque()
    pool = ThreadPoolExecutor(max(1, workers), thread_name_prefix="hermes-read")
    try:
        for job in itertools.islice(jobs, depth):
            pending.append(pool.submit(job))
        while pending:
            result = pending.popleft().result()
            job = next(jobs, None)
            if job is not None:
                pending.append(pool.submit(job))
            yield result
    finally:
        for f in pending:
            f.cancel()
        pool.shutdown(wait=True)


READERS = {".npy": NpyShard, ".safetensors": SafetensorsShard, ".parquet": ParquetShard}
"""Reader class by file extension; each is called as ``cls(fn, path, column=..., tensor=...)``."""


def open_shard(path, *, column: str = "embedding", tensor: str | None = None, fn: str = "open_shard") -> Shard:
    """Opens one embedding shard for streaming (nothing is read but headers and footers).

    Args:
        path: a ``.npy``, ``.safetensors`` or ``.parquet`` file.
        column: the parquet column holding the embeddings (list or fixed-size list of floats).
        tensor: the safetensors tensor name (default: the file's only 2-d tensor).
        fn: the public function named in error messages.

    Returns:
        a :class:`Shard` with ``n``, ``d``, ``dtype``, ``kind``, ``name``, ``stem``, ``source`` and
        ``batches(batch_size)`` yielding ``(row0, float array [b, d])``.
    """
    from ._io import is_uri

    if is_uri(path):  # s3://, gs://, hdfs://, ...: the same readers through a pyarrow filesystem
        from ._remote import open_remote_shard

        return open_remote_shard(path, column=column, tensor=tensor, fn=fn)
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{fn}: no such file: {path}")
    ext = path.suffix.lower()
    if ext not in READERS:
        raise ValueError(f"{fn}: {path} has an unsupported extension {ext!r}; use one of {', '.join(SUFFIXES)}")
    return READERS[ext](fn, path, column=column, tensor=tensor)


def expand_inputs(fn: str, inputs) -> list[Path]:
    """Paths from a path, a list of paths, or directories (their supported files, sorted)."""
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    from ._io import is_uri

    out = []
    for p in inputs:
        if is_uri(p):
            from ._remote import expand_remote

            out += expand_remote(fn, p)
            continue
        p = Path(p)
        if p.is_dir():
            found = sorted(q for q in p.iterdir() if q.suffix.lower() in SUFFIXES and not q.name.startswith("."))
            if not found:
                raise ValueError(f"{fn}: directory {p} holds no {'/'.join(SUFFIXES)} files")
            out += found
        elif not p.exists():
            raise FileNotFoundError(f"{fn}: no such file: {p}")
        else:
            out.append(p)
    if not out:
        raise ValueError(f"{fn}: no input shards given")
    return out


def sample_rows(total: int, sample: int, seed: int) -> np.ndarray:
    """The sorted global row ids [sample] that read_embeddings(sample=, seed=) reads, of ``total`` rows."""
    return np.sort(np.random.default_rng(seed).choice(total, size=int(sample), replace=False))


def _open_inputs(inputs, column, tensor, sample, seed, fn: str) -> tuple:
    """(shards of one dimension, total rows, checked sample or None, checked seed) of the readers' inputs."""
    from ._validate import check_int, check_seed

    shards = [open_shard(p, column=column, tensor=tensor, fn=fn) for p in expand_inputs(fn, inputs)]
    if len({s.d for s in shards}) > 1:
        raise ValueError(f"{fn}: the inputs have different dimensions: " +
                         ", ".join(f"{s.path} d={s.d}" for s in shards))
    if sample is not None:
        sample = check_int(fn, "sample", sample, lo=1)
    return shards, sum(s.n for s in shards), sample, check_seed(fn, seed)


def read_embeddings(inputs, *, column: str = "embedding", tensor: str | None = None, sample: int | None = None,
                    seed: int = 0, batch_size: int = DEFAULT_BATCH, fn: str = "read_embeddings") -> np.ndarray:
    """Reads shards into one ``[N, d]`` array (float16 kept, bf16/float64 as float32), or ``sample`` random rows.

    With ``sample`` (< total rows), a uniform sample without replacement is read batch by batch, in shard
    order (memory bounded by the sample). A single ``.npy`` shard read whole is returned memory-mapped.
    """
    shards, total, sample, seed = _open_inputs(inputs, column, tensor, sample, seed, fn)
    d = {s.d for s in shards}
    if sample is None or sample >= total:
        if len(shards) == 1 and shards[0].kind == "npy" and getattr(shards[0], "x", None) is not None:
            # a local .npy: a numpy.memmap, which fit streams instead of loading (the shard's own mapping is a
            # plain ndarray)
            return np.load(shards[0].path, mmap_mode="r", allow_pickle=False)
        parts = [b for s in shards for _, b in s.batches(batch_size)]
        return np.concatenate(parts) if parts else np.zeros((0, d.pop() if d else 0), np.float32)
    keep = sample_rows(total, sample, seed)
    parts, base = [], 0
    for s in shards:
        mine = keep[(keep >= base) & (keep < base + s.n)] - base
        if getattr(s, "x", None) is not None:
            parts.append(np.asarray(s.x[mine]))
        elif mine.size:
            for lo, b in s.batches(batch_size):
                sel = mine[(mine >= lo) & (mine < lo + b.shape[0])] - lo
                if sel.size:
                    parts.append(b[sel])
        base += s.n
    return np.concatenate(parts)


# ------------------------------------------------------------------------- fit inputs, read per DDP rank
def _st_array(s: "SafetensorsShard") -> np.ndarray:
    """The tensor of a local safetensors shard, memory-mapped at its data offset (bf16 as raw uint16)."""
    import json
    import struct

    with open(s.path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        h = json.loads(f.read(n))[s.tensor]
    dt = {"float16": "<f2", "bfloat16": "<u2", "float32": "<f4", "float64": "<f8"}[s.dtype]
    if s.n * s.d == 0:
        return np.zeros((s.n, s.d), dt)
    return np.memmap(s.path, dtype=dt, mode="r", offset=8 + n + h["data_offsets"][0], shape=(s.n, s.d))


def _row_array(s: Shard):
    """Shard s's rows as a numpy array indexable by row without reading the rest (a local .npy's mapping, a local
    safetensors tensor's memory map), or None when s can only be read in order (parquet, remote objects)."""
    if isinstance(s, NpyShard) and getattr(s, "x", None) is not None:
        return s.x
    if type(s) is SafetensorsShard:
        return _st_array(s)
    return None


def _as_float(a: np.ndarray, bf16: bool, dtype) -> np.ndarray:
    """Rows read from a row array in ``dtype`` (bf16 stored as uint16: widened to float32 exactly)."""
    if bf16:
        a = (np.asarray(a, dtype=np.uint32) << 16).view(np.float32)
    return np.asarray(a, dtype=dtype)


def _out_dtype(shards) -> np.dtype:
    """float16 when every shard holds float16, else float32 (bf16 and float64 are read as float32)."""
    return np.dtype(np.float16) if shards and all(s.dtype == "float16" for s in shards) else np.dtype(np.float32)


class ShardArray:
    """``[N, d]`` rows of local ``.npy`` / ``.safetensors`` shards one after another (or the sorted global rows
    ``keep`` of them, a ``--sample``), read lazily: indexing (an int, a slice, or an int array) reads only the
    rows asked for, from the shards' memory maps, and returns a new ndarray [k, d] (float16 when every shard is
    float16, else float32). This is what a single ``.npy`` memmap is to ``fit``, for several shards and for
    safetensors: under DDP each rank reads only its share of every minibatch.

    ``rows_read`` counts the rows materialized so far (a diagnostic: ``HERMES_DEBUG_ROWS=1 hermes fit``).
    """

    ndim = 2

    def __init__(self, shards, keep: np.ndarray | None = None):
        self.shards = list(shards)
        self._arrays = [_row_array(s) for s in self.shards]
        if any(a is None for a in self._arrays):
            bad = next(s for s, a in zip(self.shards, self._arrays) if a is None)
            raise ValueError(f"ShardArray: {bad.source} cannot be read by row (only local .npy / .safetensors)")
        self._bf16 = [s.dtype == "bfloat16" for s in self.shards]
        self.starts = np.concatenate([[0], np.cumsum([s.n for s in self.shards], dtype=np.int64)])
        self.keep = keep
        d = {s.d for s in self.shards}
        self.d = d.pop() if len(d) == 1 else 0
        self.N = int(self.starts[-1]) if keep is None else int(len(keep))
        self.dtype = _out_dtype(self.shards)
        self.shape = (self.N, self.d)
        self.rows_read = 0

    def __len__(self) -> int:
        return self.N

    def __getitem__(self, key):
        if isinstance(key, (int, np.integer)) and not isinstance(key, (bool, np.bool_)):
            k = int(key) + self.N if key < 0 else int(key)
            if not 0 <= k < self.N:
                raise IndexError(f"ShardArray: row {key} is out of range for {self.N} rows")
            return self._take(np.array([k], dtype=np.int64))[0]
        if isinstance(key, slice):
            return self._take(np.arange(*key.indices(self.N), dtype=np.int64))
        ids = np.asarray(key)
        if ids.dtype.kind not in "iu" or ids.ndim != 1:
            raise TypeError(f"ShardArray: index with an int, a slice or a 1-d int array, got {ids.dtype} "
                            f"{ids.ndim}-d")
        ids = ids.astype(np.int64)
        ids = np.where(ids < 0, ids + self.N, ids)
        if ids.size and (ids.min() < 0 or ids.max() >= self.N):
            raise IndexError(f"ShardArray: rows out of range for {self.N} rows")
        return self._take(ids)

    def _take(self, ids: np.ndarray) -> np.ndarray:
        out = np.empty((ids.size, self.d), dtype=self.dtype)
        if not ids.size:
            return out
        g = self.keep[ids] if self.keep is not None else ids
        order = None
        if ids.size > 1 and (np.diff(g) < 0).any():
            order = np.argsort(g, kind="stable")
            g = g[order]
        which = np.searchsorted(self.starts, g, side="right") - 1
        cuts = np.flatnonzero(np.diff(which)) + 1
        at = 0
        for part in np.split(np.arange(g.size), cuts):
            i = int(which[part[0]])
            local = g[part] - self.starts[i]
            a = self._arrays[i]
            if local[-1] - local[0] + 1 == local.size:  # a run of consecutive rows: one slice
                rows = a[int(local[0]):int(local[-1]) + 1]
            else:
                rows = a[local]
            out[at:at + part.size] = _as_float(rows, self._bf16[i], self.dtype)
            at += part.size
        self.rows_read += int(ids.size)
        if order is not None:
            res = np.empty_like(out)
            res[order] = out
            out = res
        return out

    def __repr__(self) -> str:
        return f"ShardArray({len(self.shards)} shards, shape={self.shape}, dtype={self.dtype})"


class RowPartition:
    """One DDP rank's contiguous share of an ``[N, d]`` input that cannot be read by row (parquet, remote
    objects): the rows [lo, hi) of the N (``bounds[rank]`` to ``bounds[rank + 1]``), read into ``data``
    [hi - lo, d] (float16 when every shard is float16, else float32). ``shape`` is the whole input's (N, d).
    ``rows_read`` counts the rows decoded to build it (whole parquet row groups: a little more than hi - lo).
    """

    ndim = 2

    def __init__(self, data: np.ndarray, bounds: np.ndarray, rank: int, rows_read: int):
        self.data, self.bounds, self.rank = data, np.asarray(bounds, dtype=np.int64), int(rank)
        self.world = len(self.bounds) - 1
        self.lo, self.hi = int(self.bounds[rank]), int(self.bounds[rank + 1])
        self.N, self.d = int(self.bounds[-1]), int(data.shape[1])
        self.shape, self.dtype = (self.N, self.d), data.dtype
        self.rows_read = int(rows_read)

    def __len__(self) -> int:
        return self.N

    def __repr__(self) -> str:
        return f"RowPartition(rows {self.lo}:{self.hi} of {self.N}, d={self.d}, rank {self.rank} of {self.world})"


def _read_ids(fn: str, shards, ids: np.ndarray, batch_size: int) -> tuple[np.ndarray, int]:
    """The global rows ``ids`` (sorted) of ``shards`` one after another, reading only what covers them:
    memory-mapped rows, the parquet row groups that hold any of them, ranged reads of remote objects.
    Returns (rows [len(ids), d], rows decoded)."""
    d = shards[0].d if shards else 0
    out = np.empty((ids.size, d), dtype=_out_dtype(shards))
    decoded, at, base = 0, 0, 0
    for s in shards:
        a, b = np.searchsorted(ids, [base, base + s.n])
        mine = ids[a:b] - base
        base += s.n
        if not mine.size:
            continue
        arr = _row_array(s)
        if arr is not None:
            lo, hi = int(mine[0]), int(mine[-1]) + 1
            rows = arr[lo:hi] if hi - lo == mine.size else arr[mine]
            out[at:at + mine.size] = _as_float(rows, s.dtype == "bfloat16", out.dtype)
            decoded += int(mine.size)
        elif isinstance(s, ParquetShard):
            starts = np.concatenate([[0], np.cumsum(s.row_groups, dtype=np.int64)])
            groups = np.unique(np.searchsorted(starts, mine, side="right") - 1)
            where = f"{s.path}, column {s.column!r}"
            md = s.pf.metadata
            local = threading.local()

            def read_group(i, s=s, starts=starts, where=where, md=md, local=local):
                if getattr(local, "pf", None) is None:
                    local.pf = s._open(metadata=md)
                t = local.pf.read_row_group(int(i), columns=[s.column], use_threads=False)
                return i, _list_to_matrix(fn, t.column(0), where, int(starts[i]), s.d)

            import pyarrow as pa

            workers = max(1, min(pa.cpu_count(), 16, len(groups)))
            k = 0
            for i, x in _read_ahead((functools.partial(read_group, i) for i in groups), workers=workers,
                                    depth=workers + 1):
                j = int(np.searchsorted(mine, starts[i + 1]))
                sel = mine[k:j] - starts[i]
                out[at + k:at + j] = x[sel]
                decoded += x.shape[0]
                k = j
        elif hasattr(s, "rows"):  # a remote .npy / .safetensors: ranged reads of the span, batch by batch
            lo, hi = int(mine[0]), int(mine[-1]) + 1
            k = 0
            for r in range(lo, hi, batch_size):
                x = s.rows(r, min(hi, r + batch_size))
                j = int(np.searchsorted(mine, r + x.shape[0]))
                out[at + k:at + j] = x[mine[k:j] - r]
                decoded += x.shape[0]
                k = j
        else:  # any other reader: its batches, in order, up to the last row needed
            k = 0
            for lo, x in s.batches(batch_size):
                j = int(np.searchsorted(mine, lo + x.shape[0]))
                out[at + k:at + j] = x[mine[k:j] - lo]
                decoded += x.shape[0]
                k = j
                if k == mine.size:
                    break
        at += mine.size
    return out, decoded


def open_fit_input(inputs, *, column: str = "embedding", tensor: str | None = None, sample: int | None = None,
                   seed: int = 0, rank: int | None = None, world: int | None = None,
                   batch_size: int = DEFAULT_BATCH, fn: str = "open_fit_input"):
    """The input of ``hermes.fit`` for one DDP rank, read no further than the rank needs.

    - every shard a local ``.npy`` or ``.safetensors`` (float16/32/64, bf16): a :class:`ShardArray`, read lazily
      by row, so each rank reads only the rows of its share of every minibatch (and rank 0 the k-means sample);
    - otherwise (parquet, objects on a remote filesystem): a :class:`RowPartition`, rank r's contiguous
      ``1/world`` of the rows read into memory (the parquet row groups covering it), which ``fit`` trains on
      with a permutation of the partition per rank (see ``fit``'s DDP note).

    Args:
        inputs: a path or URI, a list of them, or directories (as :func:`read_embeddings`).
        column, tensor: the parquet column / the safetensors tensor holding the embeddings.
        sample: fit on this many rows drawn uniformly at random (the rows :func:`read_embeddings` would read
            with the same ``sample`` and ``seed``), split between the ranks as above.
        rank, world: this process's rank and the number of ranks (default: the initialized
            ``torch.distributed`` process group's, else 0 and 1).
        batch_size: rows per read of ordered readers.

    Returns:
        a :class:`ShardArray` or :class:`RowPartition`; both have ``shape`` (the whole input's N, d) and
        ``rows_read``; ``hermes.fit`` takes either.
    """
    if rank is None or world is None:
        rank, world = 0, 1
        try:
            import torch.distributed as dist

            if dist.is_available() and dist.is_initialized():
                rank, world = dist.get_rank(), dist.get_world_size()
        except ImportError:
            pass
    if isinstance(world, bool) or not isinstance(world, (int, np.integer)) or world < 1:
        raise ValueError(f"{fn}: world must be a positive integer, got {world!r}")
    if isinstance(rank, bool) or not isinstance(rank, (int, np.integer)) or not 0 <= rank < world:
        raise ValueError(f"{fn}: rank must be an integer in [0, {world}), got {rank!r}")
    shards, total, sample, seed = _open_inputs(inputs, column, tensor, sample, seed, fn)
    keep = sample_rows(total, sample, seed) if sample is not None and sample < total else None
    if all(_row_array(s) is not None for s in shards):
        return ShardArray(shards, keep)
    N = total if keep is None else int(keep.size)
    bounds = np.array([r * N // world for r in range(world + 1)], dtype=np.int64)
    lo, hi = int(bounds[rank]), int(bounds[rank + 1])
    ids = np.arange(lo, hi, dtype=np.int64) if keep is None else keep[lo:hi]
    try:
        data, decoded = _read_ids(fn, shards, ids, batch_size)
    finally:
        for s in shards:
            s.close()
    return RowPartition(data, bounds, int(rank), decoded)
