"""Scale-out labeling with Ray Data, through an actor pool that loads the model once per actor.

- ``hermes label --engine ray`` / ``hermes.label(..., engine="ray")``: :func:`label_ranges` turns the shards'
  row ranges into a Ray Dataset; :class:`RangeLabeler` actors read their range from the shard, label it (CPU
  executor, or the CUDA path on GPU actors) and publish it as a part file; the driver joins each shard's parts
  into the usual labels file (so ``stats``, ``mix`` and ``explore`` read it like single-process output), and
  the manifest is written last. A killed worker's range is retried by Ray and its part is republished whole,
  so every row appears exactly once; a rerun keeps finished shards and finished parts.
- ``label_dataset(ds, model)``: labels a Ray Dataset you already have (an embedding column); each output
  batch gains ``c1..cL`` and ``bucket_L1..`` (not ``row``: Ray Data rows carry no stable index).

Ray is an optional dependency (``pip install 'hermes-rvq[ray]'``) and is imported only when called.
"""
from __future__ import annotations

import os

import numpy as np

from .model import Model, load

__all__ = ["label_dataset", "label_batch", "BatchLabeler", "RangeLabeler", "label_ranges"]


def _matrix(col, column: str) -> np.ndarray:
    """A Ray numpy batch column (2-d tensor column, or an object array of 1-d rows) -> [n, d]."""
    a = np.asarray(col)
    if a.dtype == object and a.ndim == 1:
        lengths = {np.shape(r) for r in a}
        if len(lengths) > 1:
            raise ValueError(f"label_batch: column {column!r} holds rows of different lengths {sorted(lengths)[:4]}")
        a = np.stack(list(a)) if a.size else a.reshape(0, 0)
    if a.dtype == object:
        a = a.astype(np.float32)
    if a.ndim != 2 or a.dtype.kind != "f":
        raise ValueError(f"label_batch: column {column!r} must hold float embeddings [n, d], got shape {a.shape} "
                         f"dtype {a.dtype}")
    return a


def label_batch(batch: dict, model: Model, column: str = "embedding", *, device: str = "cpu",
                keep_columns: bool = True) -> dict:
    """Labels one Ray Data numpy batch ``{column: [n, d], ...}``; returns it with ``c1..cL`` and ``bucket_*``."""
    from .assign import assign_codes
    from .label import label_columns

    if column not in batch:
        raise ValueError(f"label_batch: the batch has no column {column!r} (columns: {list(batch)[:12]})")
    x = _matrix(batch[column], column)
    if device != "cpu":
        import torch

        codes = assign_codes(torch.from_numpy(np.ascontiguousarray(x)).to(device), model).cpu().numpy()
    else:
        codes = assign_codes(x, model)
    cols = label_columns(codes, model.levels)
    cols.pop("row")
    out = dict(batch) if keep_columns else {}
    out.update(cols)
    return out


class BatchLabeler:
    """Ray Data actor for :func:`label_dataset`: holds the model (loaded once per actor) and labels batches."""

    def __init__(self, model, column: str = "embedding", device: str = "cpu", keep_columns: bool = True):
        self.model = load(model) if isinstance(model, (str, os.PathLike)) else model
        self.column, self.device, self.keep_columns = column, device, keep_columns

    def __call__(self, batch: dict) -> dict:
        return label_batch(batch, self.model, self.column, device=self.device, keep_columns=self.keep_columns)


def _ray_data():
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as e:
        raise ImportError("hermes on Ray needs Ray Data: pip install 'ray[data]' (or hermes-rvq[ray])") from e
    return ray


def label_dataset(ds, model, column: str = "embedding", *, batch_size: int = 65536, device: str = "cpu",
                  keep_columns: bool = True, concurrency: int = 1, **map_batches_kwargs):
    """Lazily labels a ``ray.data.Dataset`` whose ``column`` holds ``[d]`` float embeddings.

    Args:
        ds: a ``ray.data.Dataset``.
        model: a :class:`hermes.Model` or the path of a saved one (loaded once here and shipped to each actor
            once).
        column: the embedding column.
        batch_size: rows per ``map_batches`` call.
        device: ``"cpu"`` or ``"cuda"`` (then pass e.g. ``num_gpus=1`` through ``map_batches_kwargs``).
        keep_columns: keep the input columns next to the labels (False: only ``c1..cL`` and ``bucket_*``).
        concurrency: actors in the pool (each holds one copy of the model).
        **map_batches_kwargs: passed to ``Dataset.map_batches`` (``num_gpus``, ``num_cpus``, ...).

    Returns:
        the mapped ``ray.data.Dataset`` (nothing runs until it is consumed or written).
    """
    _ray_data()
    if isinstance(model, (str, os.PathLike)):
        model = load(model)
    if not isinstance(model, Model):
        raise TypeError(f"label_dataset: model must be a hermes.Model or a path, got {type(model).__name__}")
    return ds.map_batches(BatchLabeler, batch_format="numpy", batch_size=batch_size, concurrency=concurrency,
                          fn_constructor_kwargs=dict(model=model, column=column, device=device,
                                                     keep_columns=keep_columns),
                          **map_batches_kwargs)


# --------------------------------------------------------------------------- labeling shards on Ray
_FAULT_ENV = "HERMES_RAY_FAULT_KILL_ONCE"  # fault injection for the tests: a file path; see RangeLabeler


def _read_rows(s, lo: int, hi: int) -> np.ndarray:
    """Rows [lo, hi) of an opened shard (hermes.readers), float [hi - lo, d], reading only what they need."""
    if hasattr(s, "rows"):  # shards on object storage: one ranged read
        return s.rows(lo, hi)
    if s.kind == "npy":
        return s.x[lo:hi]
    if s.kind == "safetensors":
        import torch

        t = s.slice[lo:hi]
        return (t.float() if t.dtype == torch.bfloat16 else t).numpy()
    if s.kind == "parquet":
        import pyarrow as pa

        from .readers import _list_to_matrix

        md, first, parts, base = s.pf.metadata, None, [], 0
        for g in range(md.num_row_groups):
            n = md.row_group(g).num_rows
            if base < hi and base + n > lo:
                first = base if first is None else first
                parts.append(g)
            base += n
        t = s.pf.read_row_groups(parts, columns=[s.column])
        col = t.column(0).slice(lo - first, hi - lo)
        return _list_to_matrix(s.fn, pa.chunked_array(col.chunks, col.type), f"{s.path}, column {s.column!r}", lo,
                               s.d)
    rows = [b for b0, b in s.batches(hi - lo) if b0 == lo]  # other readers: ranges are batch-aligned
    return rows[0]


def _join(base: str, name: str) -> str:
    from ._io import is_uri, uri_join

    return uri_join(base, name) if is_uri(base) else os.path.join(base, name)


def _list_parts(d: str) -> list:
    """File names in the parts directory d (a local path or a URI), created when missing."""
    from ._io import is_uri, open_uri

    if not is_uri(d):
        os.makedirs(d, exist_ok=True)
        return os.listdir(d)
    import pyarrow.fs as pafs

    fs, key = open_uri(d, "label")
    return [i.path.rsplit("/", 1)[-1] for i in fs.get_file_info(pafs.FileSelector(key, allow_not_found=True))
            if i.type == pafs.FileType.File]


def _remove(path: str, tree: bool = False) -> None:
    from ._io import is_uri, open_uri

    if is_uri(path):
        fs, key = open_uri(path, "label")
        try:
            fs.delete_dir(key) if tree else fs.delete_file(key)
        except OSError:
            pass
    elif tree:
        import shutil

        shutil.rmtree(path, ignore_errors=True)
    elif os.path.exists(path):
        os.unlink(path)


def _part_name(lo: int, hi: int) -> str:
    return f"{lo:012d}-{hi:012d}.parquet"


class RangeLabeler:
    """Ray Data actor for :func:`label_ranges`: the model is loaded once, when the actor starts.

    Each call gets rows ``{"i", "lo", "hi"}`` (a shard index and a row range), reads those rows from the
    shard, labels them and publishes ``parts[i]/<lo>-<hi>.parquet`` atomically (a temporary name, then a
    rename), and returns ``{"i", "lo", "rows", "node"}``.
    """

    def __init__(self, model, shards: list, parts: list, levels, column: str, tensor, device: str,
                 compression: str):
        import ray

        from ._backend import cuda_available

        self.model = load(model) if isinstance(model, (str, os.PathLike)) else model
        self.shards, self.parts, self.levels = shards, parts, tuple(levels)
        self.column, self.tensor, self.compression = column, tensor, compression
        gpus = ray.get_gpu_ids()
        if device == "auto":
            device = "cuda" if gpus and cuda_available() else "cpu"
        self.device = device
        self.node = ray.get_runtime_context().get_node_id()
        self._open = {}

    def _shard(self, i: int):
        from .readers import open_shard

        if i not in self._open:
            self._open[i] = open_shard(self.shards[i], column=self.column, tensor=self.tensor, fn="label")
        return self._open[i]

    def __call__(self, batch: dict) -> dict:
        import pyarrow as pa
        import pyarrow.parquet as pq

        from ._io import atomic_path
        from .assign import assign_codes
        from .label import label_columns

        out = {"i": [], "lo": [], "rows": [], "node": []}
        for i, lo, hi in zip(batch["i"].tolist(), batch["lo"].tolist(), batch["hi"].tolist()):
            s = self._shard(i)
            x = _read_rows(s, lo, hi)
            if self.device == "cpu":
                codes = assign_codes(x, self.model, progress=False)
            else:
                import torch

                codes = assign_codes(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(self.device),
                                     self.model).cpu().numpy()
            table = pa.Table.from_pydict(label_columns(codes, self.levels, lo))
            path = _join(self.parts[i], _part_name(lo, hi))

            def write(tmp, table=table):
                pq.write_table(table, tmp, compression=self.compression)
                armed = os.environ.get(_FAULT_ENV)
                if armed:  # the tests' fault injection: while the file `armed` exists, the first worker to remove
                    try:   # it dies (SIGKILL) with its part written but not yet published
                        os.unlink(armed)
                    except FileNotFoundError:
                        pass
                    else:
                        os.kill(os.getpid(), 9)

            atomic_path(path, write)
            out["i"].append(i)
            out["lo"].append(lo)
            out["rows"].append(hi - lo)
            out["node"].append(self.node)
        return {k: np.asarray(v) for k, v in out.items()}


def _join_parts(fn: str, parts_dir: str, ranges: list, out, meta: dict, levels, compression: str) -> None:
    """Writes the parts of one shard, in row order, into ``out`` (atomically, with the labels schema)."""
    import pyarrow.parquet as pq

    from ._io import atomic_path
    from .label import _schema

    schema = _schema(levels, meta)

    def write(tmp):
        with pq.ParquetWriter(tmp, schema, compression=compression) as w:
            for lo, hi in ranges:
                t = pq.read_table(_join(parts_dir, _part_name(lo, hi)))
                if t.num_rows != hi - lo or t.column("row")[0].as_py() != lo:
                    raise ValueError(f"{fn}: part {_part_name(lo, hi)} of {out} holds {t.num_rows} rows from "
                                     f"{t.column('row')[0]}, expected rows {lo}..{hi - 1}")
                w.write_table(t.cast(schema))

    atomic_path(out, write)


def label_ranges(fn: str, todo: list, model: Model, *, batch_size: int, device: str, compression: str, bar=None,
                 column: str = "embedding", tensor=None, address: str | None = None, concurrency: int | None = None,
                 num_cpus_per_worker: float = 1, num_gpus_per_worker: float = 0, runtime_env: dict | None = None,
                 parts_root: str | None = None) -> dict:
    """Labels shards on Ray (the ``engine="ray"`` path of :func:`hermes.label`).

    Args:
        todo: ``(shard, out path, labels metadata)`` per shard to label (opened with hermes.readers).
        batch_size: rows per range (one part file, one actor call).
        device: ``"auto"`` (CUDA on GPU actors, else the CPU executor), ``"cpu"`` or ``"cuda"``.
        address: a running cluster's address (``ray start --head`` prints it); None starts a local Ray (or uses
            the one this process already initialized).
        concurrency: actors in the pool (default: as many as the cluster's CPUs (or GPUs) allow).
        num_cpus_per_worker, num_gpus_per_worker: resources of each actor (its CPU executor uses that many
            threads).

    Returns:
        rows labeled per Ray node id (the ranges this call labeled; parts kept from an earlier run excluded).
    """
    ray = _ray_data()
    if not todo:
        return {}
    if num_gpus_per_worker < 0 or num_cpus_per_worker <= 0:
        raise ValueError(f"{fn}: num_gpus_per_worker must be >= 0 and num_cpus_per_worker > 0, got "
                         f"{num_gpus_per_worker} and {num_cpus_per_worker}")
    if device not in ("auto", "cpu") and not num_gpus_per_worker:
        raise ValueError(f"{fn}: device={device!r} on Ray needs GPU actors: set num_gpus_per_worker "
                         f"(CLI: --num-gpus-per-worker)")
    if concurrency is not None and (not isinstance(concurrency, int) or concurrency < 1):
        raise ValueError(f"{fn}: concurrency must be a positive integer, got {concurrency!r}")
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=False, runtime_env=runtime_env)
    elif address is not None:
        raise RuntimeError(f"{fn}: Ray is already initialized in this process; address={address!r} cannot be used")
    if concurrency is None:
        res = ray.cluster_resources()
        by = [res.get("CPU", 1) / num_cpus_per_worker] + \
             ([res.get("GPU", 0) / num_gpus_per_worker] if num_gpus_per_worker else [])
        concurrency = max(1, int(min(by)))
    shards, parts, items, plan = [], [], [], []
    for i, (s, out, meta) in enumerate(todo):
        out = str(out)
        root = parts_root or os.path.join(os.path.dirname(out), ".hermes-parts")
        d = _join(root, f"{s.stem}.{meta['model']['fingerprint']}.{meta['source_fingerprint']}")
        names = _list_parts(d)
        for stale in names:
            if stale.startswith("."):
                _remove(_join(d, stale))  # a temporary part of a killed worker
        ranges = [(lo, min(lo + batch_size, s.n)) for lo in range(0, s.n, batch_size)]
        done = set(names)
        shards.append(s.source)
        parts.append(d)
        plan.append(ranges)
        for lo, hi in ranges:
            if _part_name(lo, hi) in done:
                if bar is not None:
                    bar.update(hi - lo)
            else:
                items.append({"i": i, "lo": lo, "hi": hi})
    nodes: dict = {}
    if items:
        ds = ray.data.from_items(items, override_num_blocks=len(items))
        ds = ds.map_batches(
            RangeLabeler, batch_size=1, batch_format="numpy", concurrency=concurrency, num_cpus=num_cpus_per_worker,
            num_gpus=num_gpus_per_worker or None,
            fn_constructor_kwargs=dict(model=model, shards=shards, parts=parts, levels=model.levels, column=column,
                                       tensor=tensor, device=device, compression=compression),
            max_restarts=-1, max_task_retries=-1)
        for b in ds.iter_batches(batch_size=None, batch_format="numpy"):
            for rows, node in zip(b["rows"].tolist(), b["node"].tolist()):
                nodes[node] = nodes.get(node, 0) + rows
                if bar is not None:
                    bar.update(rows)
    for (s, out, meta), d, ranges in zip(todo, parts, plan):
        have = set(_list_parts(d))
        missing = [_part_name(lo, hi) for lo, hi in ranges if _part_name(lo, hi) not in have]
        if missing:
            raise RuntimeError(f"{fn}: Ray finished but {len(missing)} part(s) of {s.name} are missing "
                               f"(first {missing[0]}); rerun to label them")
        _join_parts(fn, d, ranges, out, meta, model.levels, compression)
        _remove(d, tree=True)
    if parts_root is None:
        try:
            os.rmdir(os.path.join(os.path.dirname(str(todo[0][1])), ".hermes-parts"))
        except OSError:
            pass
    else:  # object storage: drop the (empty) parts prefix and its directory marker
        import pyarrow.fs as pafs

        from ._io import open_uri

        fs, key = open_uri(parts_root, fn)
        left = fs.get_file_info(pafs.FileSelector(key, recursive=True, allow_not_found=True))
        if not any(i.type == pafs.FileType.File for i in left):
            _remove(parts_root, tree=True)
    return nodes
