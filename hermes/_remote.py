"""Embedding shards on any pyarrow filesystem (``s3://``, ``gs://``, ``hdfs://``, ...): the readers of
:mod:`hermes.readers`, reading through the filesystem's random-access files instead of local paths.

- ``.parquet``: :class:`hermes.readers.ParquetShard` on a ``pyarrow`` input file (footer, then row groups);
- ``.npy`` / ``.safetensors``: the header is parsed here; rows are one contiguous row-major block, read by
  ranges (``read_at``), so a batch costs one ranged GET.

A shard's ``source`` is its URI; ``identity()`` is [size, mtime_ns]; ``fingerprint()`` hashes the object's bytes.
"""
from __future__ import annotations

import ast
import json
import posixpath
import struct

import numpy as np

from ._io import is_uri, open_uri
from .readers import SUFFIXES, ParquetShard, Shard

__all__ = ["URIPath", "open_remote_shard", "expand_remote"]


class URIPath:
    """The parts of :class:`pathlib.Path` the readers use (name, stem, suffix, resolve, str), for a URI."""

    def __init__(self, uri: str, fn: str = "hermes"):
        self.uri = uri
        self.fs, self.key = open_uri(uri, fn)
        self.name = posixpath.basename(self.key.rstrip("/"))
        self.suffix = posixpath.splitext(self.name)[1]
        self.stem = self.name[:len(self.name) - len(self.suffix)] if self.suffix else self.name

    def resolve(self):
        return self

    def info(self):
        return self.fs.get_file_info(self.key)

    def __str__(self):
        return self.uri

    def __repr__(self):
        return f"URIPath({self.uri!r})"


class _RemoteMixin:
    """identity/fingerprint of an object on a pyarrow filesystem."""

    path: URIPath

    def identity(self) -> list:
        info = self.path.info()
        return [int(info.size or 0), int(info.mtime_ns or 0)]

    def fingerprint(self, like: str | None = None) -> str:
        from .readers import content_hasher

        h, prefix = content_hasher(like)
        with self.path.fs.open_input_stream(self.path.key) as f:
            while block := f.read(8 << 20):
                h.update(block)
        return prefix + h.hexdigest()[:32]


class RemoteParquetShard(_RemoteMixin, ParquetShard):
    """A parquet shard read through a pyarrow filesystem."""

    def _open(self, metadata=None, stream: bool = False):
        import pyarrow.parquet as pq

        f = self.path.fs.open_input_file(self.path.key)
        if stream:
            return pq.ParquetFile(f, metadata=metadata, buffer_size=8 << 20, pre_buffer=False)
        return pq.ParquetFile(f, metadata=metadata)


_ST_DTYPES = {"F16": "float16", "BF16": "bfloat16", "F32": "float32", "F64": "float64"}


class RemoteRowsShard(_RemoteMixin, Shard):
    """A .npy array or a .safetensors tensor on a pyarrow filesystem: a row-major [n, d] block at an offset."""

    def __init__(self, fn: str, path: URIPath, *, tensor: str | None = None, **_options):
        super().__init__(path)
        self.fn, self.source = fn, path.uri
        try:
            self.f = path.fs.open_input_file(path.key)
            size = self.f.size()
            if path.suffix.lower() == ".npy":
                self.kind = "npy"
                self.offset, shape, dtype = self._npy_header(size)
            else:
                self.kind = "safetensors"
                self.offset, shape, dtype = self._safetensors_header(size, tensor)
        except ValueError:
            raise
        except Exception as e:
            raise ValueError(f"{fn}: {path} is not a readable {path.suffix} file (truncated or corrupted?): "
                             f"{e}") from None
        if len(shape) != 2:
            raise ValueError(f"{fn}: {path} holds an array of shape {tuple(shape)}; embeddings must be 2-d [N, d]")
        (self.n, self.d), self.dtype = (int(shape[0]), int(shape[1])), dtype
        self.item = 2 if dtype in ("float16", "bfloat16") else np.dtype(dtype).itemsize
        if self.offset + self.n * self.d * self.item > size:
            raise ValueError(f"{fn}: {path} is truncated: {size} bytes, the header describes "
                             f"{self.offset + self.n * self.d * self.item}")

    def _npy_header(self, size: int):
        head = self.f.read_at(min(size, 65536), 0)
        if head[:6] != b"\x93NUMPY":
            raise ValueError("not a .npy file (no magic)")
        major = head[6]
        hlen, start = (struct.unpack("<H", head[8:10])[0], 10) if major == 1 else (struct.unpack("<I", head[8:12])[0], 12)
        meta = ast.literal_eval(head[start:start + hlen].decode("latin1"))
        dt = np.dtype(meta["descr"])
        if meta.get("fortran_order"):
            raise ValueError(f"{self.fn}: {self.path} is stored in Fortran order; save it C-ordered to read it remotely")
        if dt.kind != "f":
            raise ValueError(f"{self.fn}: {self.path} holds {dt} values; embeddings must be float16/32/64")
        if dt.byteorder == ">":
            raise ValueError(f"{self.fn}: {self.path} is big-endian; embeddings must be little-endian")
        return start + hlen, meta["shape"], str(dt)

    def _safetensors_header(self, size: int, tensor):
        (n,) = struct.unpack("<Q", self.f.read_at(8, 0))
        header = json.loads(self.f.read_at(n, 8))
        names = [k for k in header if k != "__metadata__"]
        if tensor is None:
            two_d = [k for k in names if len(header[k]["shape"]) == 2]
            if len(two_d) != 1:
                raise ValueError(f"{self.fn}: {self.path} holds {len(two_d)} 2-d tensors {two_d[:8]}; name the "
                                 f"embeddings with tensor= (CLI: --tensor)")
            tensor = two_d[0]
        elif tensor not in names:
            raise ValueError(f"{self.fn}: {self.path} has no tensor {tensor!r} (tensors: {names[:8]})")
        h = header[tensor]
        if h["dtype"] not in _ST_DTYPES:
            raise ValueError(f"{self.fn}: {self.path}: tensor {tensor!r} has dtype {h['dtype']}; embeddings must be "
                             f"F16, BF16, F32 or F64")
        self.tensor = tensor
        return 8 + n + h["data_offsets"][0], h["shape"], _ST_DTYPES[h["dtype"]]

    def rows(self, lo: int, hi: int) -> np.ndarray:
        """Rows [lo, hi) as float16/32/64 (bfloat16 as float32), one ranged read."""
        row_bytes = self.d * self.item
        buf = self.f.read_at((hi - lo) * row_bytes, self.offset + lo * row_bytes)
        if len(buf) != (hi - lo) * row_bytes:
            raise ValueError(f"{self.fn}: {self.path} ended near row {lo + len(buf) // max(row_bytes, 1)} of {self.n} "
                             f"(truncated?)")
        if self.dtype == "bfloat16":
            import torch

            t = torch.frombuffer(bytearray(buf), dtype=torch.bfloat16).reshape(hi - lo, self.d)
            return t.float().numpy()
        return np.frombuffer(buf, dtype=self.dtype).reshape(hi - lo, self.d).copy()

    def batches(self, batch_size):
        for lo in range(0, self.n, batch_size):
            yield lo, self.rows(lo, min(lo + batch_size, self.n))

    def close(self):
        if self.f is not None:
            self.f.close()
            self.f = None


def open_remote_shard(uri: str, *, column: str = "embedding", tensor: str | None = None,
                      fn: str = "open_shard") -> Shard:
    """Opens a shard on a pyarrow filesystem (only headers and footers are read)."""
    import pyarrow.fs as pafs

    path = URIPath(uri, fn)
    try:
        info = path.info()
    except Exception as e:
        raise OSError(f"{fn}: cannot reach {uri}: {e}") from None
    if info.type != pafs.FileType.File:
        raise FileNotFoundError(f"{fn}: no such file: {uri}")
    ext = path.suffix.lower()
    if ext == ".parquet":
        s = RemoteParquetShard(fn, path, column=column)
        s.source = uri
        return s
    if ext in (".npy", ".safetensors"):
        return RemoteRowsShard(fn, path, tensor=tensor)
    raise ValueError(f"{fn}: {uri} has an unsupported extension {ext!r}; use one of {', '.join(SUFFIXES)}")


def expand_remote(fn: str, uri: str) -> list:
    """The URI itself when it names an object, else the supported shards under it (sorted URIs)."""
    import pyarrow.fs as pafs

    fs, key = open_uri(uri, fn)
    info = fs.get_file_info(key)
    if info.type == pafs.FileType.File:
        return [uri]
    if info.type == pafs.FileType.NotFound:
        raise FileNotFoundError(f"{fn}: no such file: {uri}")
    base = uri.split("?")[0].rstrip("/")
    found = sorted(posixpath.basename(i.path) for i in fs.get_file_info(pafs.FileSelector(key.rstrip("/")))
                   if i.type == pafs.FileType.File and posixpath.splitext(i.path)[1].lower() in SUFFIXES
                   and not posixpath.basename(i.path).startswith("."))
    if not found:
        raise ValueError(f"{fn}: directory {uri} holds no {'/'.join(SUFFIXES)} files")
    q = uri.partition("?")[2]
    return [f"{base}/{name}" + (f"?{q}" if q else "") for name in found]


def is_remote(path) -> bool:
    return is_uri(path) or isinstance(path, URIPath)
