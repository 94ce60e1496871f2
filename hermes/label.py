"""Streaming labeling: embedding shards on disk -> one parquet file of codes and bucket ids per shard.

Inputs are shards of ``[N, d]`` embeddings read by :mod:`hermes.readers` (``.npy``, ``.safetensors``,
``.parquet``).

For every input shard ``<stem>.<ext>`` :func:`label` writes ``out_dir/<stem>.parquet`` with the columns

- ``row`` int64: the row index within the shard;
- ``c1`` ... ``cL``: the stage codes (int16 when K_l <= 32768, else int32);
- ``bucket_L1``, ``bucket_L12``, ... int64: the packed bucket id at every depth
  (:func:`hermes.buckets.all_bucket_ids`),

and the schema metadata key ``hermes`` (JSON: format, model levels, d, metric, fingerprint, source
shard, row count). Each file is written under a hidden temporary name and renamed into place
(``os.replace``) only when complete, so a run killed at any moment leaves only complete outputs; a rerun
skips the shards whose output is complete and matches (same model fingerprint, same row count), so
nothing is lost or duplicated. When every shard is done, ``out_dir/manifest.json`` lists the shards and
row counts (also written atomically). Memory stays bounded by ``batch_size`` rows (and, for parquet
input, the size of one row group), never by the shard.
"""
from __future__ import annotations

import glob
import hashlib
import json
import os
import re
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ._io import atomic_path, fsync_path, is_uri, publish_mode, user_os_error
from ._validate import check_int
from .model import Model, load
from .readers import DEFAULT_BATCH, SUFFIXES, Shard, expand_inputs, open_shard, read_embeddings

__all__ = ["label", "read_labels", "Labels", "read_embeddings", "open_shard", "label_columns", "LabelReport",
           "LABEL_FORMAT", "SUFFIXES"]

LABEL_FORMAT = "hermes-labels"
LABEL_FORMAT_VERSION = 1
META_KEY = b"hermes"
MANIFEST = "manifest.json"


def _on_batch_written(source: str, rows_done: int) -> None:
    """Test hook, called after each batch is written to a shard's temporary file (a no-op)."""


# --------------------------------------------------------------------------------------- output
def _code_type(K: int):
    import pyarrow as pa

    return pa.int16() if K <= 32768 else pa.int32()


def label_columns(codes: np.ndarray, levels, row0: int = 0) -> dict:
    """The output columns for a batch of codes ``[n, L]``: ``row``, ``c1..cL``, ``bucket_L1..`` (numpy)."""
    from .buckets import all_bucket_ids, depth_name

    n, L = codes.shape
    cols = {"row": np.arange(row0, row0 + n, dtype=np.int64)}
    for l in range(L):
        cols[f"c{l + 1}"] = codes[:, l].astype(np.int16 if levels[l] <= 32768 else np.int32)
    ids = all_bucket_ids(codes, tuple(levels))
    for l in range(L):
        cols[f"bucket_{depth_name(l + 1)}"] = ids[:, l]
    return cols


def _label_table(codes: np.ndarray, levels, row0: int, schema):
    """One batch's labels as a pyarrow Table of ``schema``, built on the numpy columns' own buffers
    (``pa.Table.from_pydict`` and ``pa.array`` import pandas on first use: 0.4 s of every labeling process)."""
    import pyarrow as pa

    cols = label_columns(codes, levels, row0)
    arrays = []
    for f in schema:  # every labels column is a signed integer (row, codes, bucket ids)
        assert pa.types.is_signed_integer(f.type), f
        a = np.ascontiguousarray(cols[f.name], dtype=np.dtype(f"int{f.type.bit_width}"))
        arrays.append(pa.Array.from_buffers(f.type, len(a), [None, pa.py_buffer(a)]))
    return pa.Table.from_arrays(arrays, schema=schema)


def _schema(levels, meta: dict):
    import pyarrow as pa
    from .buckets import depth_name

    fields = [pa.field("row", pa.int64(), nullable=False)]
    fields += [pa.field(f"c{l + 1}", _code_type(K), nullable=False) for l, K in enumerate(levels)]
    fields += [pa.field(f"bucket_{depth_name(l + 1)}", pa.int64(), nullable=False) for l in range(len(levels))]
    return pa.schema(fields, metadata={META_KEY: json.dumps(meta).encode()})


def model_fingerprint(model: Model) -> str:
    """A short hash of everything that decides the codes (levels, metric, normalize, codebooks, W, b)."""
    h = hashlib.sha256()
    h.update(json.dumps([list(model.levels), model.d, model.metric, model.normalize]).encode())
    for a in (*model.codebooks, model.W, model.b):
        h.update(b"-" if a is None else np.ascontiguousarray(a, dtype=np.float32).tobytes())
    return h.hexdigest()[:16]


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    atomic_path(path, lambda tmp: Path(tmp).write_bytes(data))


def _read_meta(path: Path) -> tuple[dict | None, int]:
    """(hermes metadata or None, row count) of a labels file; (None, -1) when it is unreadable."""
    import pyarrow.parquet as pq

    try:
        md = pq.read_metadata(path)
        kv = md.metadata or {}
        return (json.loads(kv[META_KEY]) if META_KEY in kv else None), md.num_rows
    except Exception:
        return None, -1


def _resolve_device(fn: str, device):
    from ._backend import cuda_available, cuda_unavailable_reason

    if device is None:
        return "cuda" if cuda_available() else "cpu"
    device = str(device)
    if device == "cpu":
        return device
    if device.startswith("cuda"):
        if not cuda_available():
            raise RuntimeError(f"{fn}: device={device!r} but the CUDA path is unavailable: "
                               f"{cuda_unavailable_reason() or 'no CUDA device'}")
        return device
    raise ValueError(f"{fn}: device must be 'cpu', 'cuda', 'cuda:N' or None, got {device!r}")


# ---------------------------------------------------------------------------------------- label
@dataclass
class LabelReport:
    """What :func:`label` did: the manifest it wrote, and how many shards it labeled or skipped."""

    out_dir: Path
    manifest: dict
    labeled: list = field(default_factory=list)  # output names written by this call
    skipped: list = field(default_factory=list)  # output names already complete
    rows_labeled: int = 0
    seconds: float = 0.0
    nodes: dict = field(default_factory=dict)  # engine="ray": rows labeled per Ray node id

    @property
    def rows(self) -> int:
        return int(self.manifest["rows"])


def _check_model(fn: str, model):
    if isinstance(model, (str, os.PathLike)):
        return load(model), os.fspath(model)
    if not isinstance(model, Model):
        raise TypeError(f"{fn}: model must be a hermes.Model or a path to a saved model, got {type(model).__name__}")
    return model, None


def label(inputs, model, out_dir, *, column: str = "embedding", tensor: str | None = None,
          batch_size: int = DEFAULT_BATCH, device=None, progress: bool = True, overwrite: bool = False,
          compression: str = "zstd", engine: str = "local", ray_options: dict | None = None,
          _publish=None) -> LabelReport:
    """Labels embedding shards on disk with ``model``, one output parquet file per shard (see the module doc).

    Args:
        inputs: a path or a list of paths: ``.npy`` ``[N, d]`` (memory-mapped), ``.safetensors`` (one 2-d
            tensor or ``tensor``), ``.parquet`` (the list column ``column``), or directories of them.
        model: a :class:`hermes.Model` or the path of a saved one.
        out_dir: output directory (created). Output names are the input stems + ``.parquet``.
        column: parquet column holding the embeddings.
        tensor: safetensors tensor name (default: the file's only 2-d tensor).
        batch_size: rows read, labeled and written at a time (bounds the memory).
        device: ``"cpu"``, ``"cuda"``/``"cuda:N"`` (pinned, double-buffered copies overlapped with the
            kernels), or None: CUDA when available, else CPU.
        progress: show a progress bar (rows/s) on stderr.
        overwrite: relabel shards whose output exists (also when it came from another model; without it
            that is an error).
        compression: parquet compression codec of the outputs.
        engine: ``"local"`` (this process) or ``"ray"``: the shards' row ranges become a Ray Dataset labeled by
            an actor pool (the model loaded once per actor; see :func:`hermes.ray.label_ranges`), each range
            written as a part file under ``out_dir/.hermes-parts``, then joined into the same outputs and
            manifest as the local engine (a rerun keeps finished shards and finished parts).
        ray_options: with ``engine="ray"``: ``address`` (of a running cluster; default: start a local one),
            ``concurrency`` (actors), ``num_cpus_per_worker``, ``num_gpus_per_worker`` (GPU actors label
            on CUDA), ``runtime_env``.

    Returns:
        a :class:`LabelReport`; ``report.manifest`` is the content of ``out_dir/manifest.json``:
        ``{"format", "format_version", "model": {...}, "shards": [{"source", "output", "rows"}], "rows"}``.

    Raises:
        ValueError naming the file (and column or row) for an unreadable, truncated or corrupted shard, a
        missing column, a dimension that differs from the model's, NaN/Inf rows, two inputs with the same
        stem, or an existing output from a different model; the shard being written is then discarded
        (the shards finished before it are kept, and a rerun resumes after them).
    """
    fn = "label"
    import pyarrow.parquet  # noqa: F401  (imported lazily below; module import time is not labeling time,
    import torch  # noqa: F401             which the report's seconds and the CLI's rows/s measure)

    t0 = time.perf_counter()
    model, model_path = _check_model(fn, model)
    batch_size = check_int(fn, "batch_size", batch_size, 1)
    compression = _check_compression(fn, compression)
    if engine not in ("local", "ray"):
        raise ValueError(f"{fn}: engine must be 'local' or 'ray', got {engine!r}")
    device = _resolve_device(fn, device) if engine == "local" else (device or "auto")
    paths = expand_inputs(fn, inputs)
    if is_uri(out_dir):  # object storage: label into a local staging directory, publish each finished file
        return _label_to_uri(fn, inputs, model, out_dir, dict(
            column=column, tensor=tensor, batch_size=batch_size, device=device if engine == "local" else None,
            progress=progress, overwrite=overwrite, compression=compression, engine=engine,
            ray_options=ray_options))
    names: dict[str, Path] = {}
    for p in paths:
        name = _stem(p) + ".parquet"
        if name in names:
            raise ValueError(f"{fn}: inputs {names[name]} and {p} would both write {name}; give shards distinct "
                             f"stems or label them into different out_dirs")
        names[name] = p
    out_dir = Path(out_dir)
    _check_label_outputs(fn, inputs, paths, model_path, out_dir)
    shards = []
    for p in paths:  # open (and check) every shard before writing anything
        s = open_shard(p, column=column, tensor=tensor, fn=fn)
        if s.n and s.d != model.d:
            raise ValueError(f"{fn}: {p} has embeddings of dimension {s.d}, but the model expects d={model.d}")
        shards.append(s)
    fp = model_fingerprint(model)
    _check_other_labels(fn, out_dir, fp, set(names))
    out_dir.mkdir(parents=True, exist_ok=True)
    model_meta = {"path": model_path, "fingerprint": fp, "d": model.d, "levels": list(model.levels),
                  "metric": model.metric, "normalize": model.normalize}
    report = LabelReport(out_dir=out_dir, manifest={})
    entries, todo = [], []
    for s in shards:
        out = out_dir / (s.stem + ".parquet")
        source = s.source
        meta, rows = _read_meta(out) if out.exists() else (None, -1)
        known = meta.get("source_stat") == s.identity() and meta.get("source") == source if meta else False
        src_fp = meta["source_fingerprint"] if known and meta.get("source_fingerprint") else \
            s.fingerprint(like=meta.get("source_fingerprint") if meta else None)
        entry = {"source": source, "source_fingerprint": src_fp, "output": out.name, "rows": int(s.n)}
        entries.append(entry)
        if meta is not None and not overwrite:
            if meta.get("model", {}).get("fingerprint") != fp:
                raise ValueError(f"{fn}: {out} exists and was labeled by another model (fingerprint "
                                 f"{meta.get('model', {}).get('fingerprint')}, this model: {fp}); pass "
                                 f"overwrite=True (CLI: --overwrite) or use another out_dir")
            if meta.get("source_fingerprint") == src_fp and meta.get("format") == LABEL_FORMAT \
                    and rows == s.n == meta.get("rows"):
                report.skipped.append(out.name)
                continue
            if meta.get("source_fingerprint") and meta.get("source") != source:
                raise ValueError(f"{fn}: {out} holds the labels of another input with the same name: "
                                 f"{meta.get('source')} (content fingerprint {meta.get('source_fingerprint')}), "
                                 f"not {s.source} ({src_fp}); pass overwrite=True (CLI: --overwrite) to relabel it "
                                 f"from {s.source}, or use another out_dir")
            warnings.warn(f"{fn}: {out} is stale: it holds labels of {meta.get('source')} as it was before "
                          f"({rows} rows, content fingerprint {meta.get('source_fingerprint')}); the source now has "
                          f"{s.n} rows, fingerprint {src_fp}; relabeling", stacklevel=2)
        elif out.exists() and not overwrite:  # our outputs appear complete or not at all: this is not ours
            raise ValueError(f"{fn}: {out} exists but is not a readable hermes labels file; remove it or pass "
                             f"overwrite=True (CLI: --overwrite)")
        todo.append((s, out, entry))
    from tqdm.auto import tqdm

    total = sum(s.n for s in shards)
    done_rows = total - sum(s.n for s, _, _ in todo)
    metas = [{"format": LABEL_FORMAT, "format_version": LABEL_FORMAT_VERSION, "model": model_meta,
              "source": entry["source"], "source_fingerprint": entry["source_fingerprint"],
              "source_stat": s.identity(), "shard": s.name, "kind": s.kind, "rows": int(s.n),
              "column": column if s.kind == "parquet" else None, "tensor": getattr(s, "tensor", None)}
             for s, _, entry in todo]
    with tqdm(total=total, initial=done_rows, unit="rows", unit_scale=True, desc="label", disable=not progress,
              dynamic_ncols=True) as bar:
        if engine == "ray":
            from .ray import label_ranges

            report.nodes = label_ranges(fn, [(s, out, meta) for (s, out, _), meta in zip(todo, metas)], model,
                                        batch_size=batch_size, device=device, compression=compression, bar=bar,
                                        column=column, tensor=tensor, **(ray_options or {}))
        for (s, out, entry), meta in zip(todo, metas):
            if engine == "local":
                bar.set_postfix_str(s.name, refresh=False)
                _label_shard(fn, s, model, out, meta, batch_size, device, compression, bar)
            if _publish is not None:
                _publish(out)
            report.labeled.append(out.name)
            report.rows_labeled += s.n
            s.close()
    manifest = {"format": LABEL_FORMAT, "format_version": LABEL_FORMAT_VERSION, "model": model_meta,
                "shards": _scan_manifest(fn, out_dir, fp, entries), "rows": 0}
    manifest["rows"] = int(sum(e["rows"] for e in manifest["shards"]))
    _atomic_write_bytes(out_dir / MANIFEST, (json.dumps(manifest, indent=1) + "\n").encode())
    if _publish is not None:
        _publish(out_dir / MANIFEST)  # last: a manifest on the store means every file it lists is there
    report.manifest = manifest
    report.seconds = time.perf_counter() - t0
    return report


_CODECS = ("zstd", "snappy", "gzip", "brotli", "lz4", "none")


def _check_compression(fn: str, compression) -> str:
    """A parquet codec name this pyarrow build can write, checked before anything is written."""
    import pyarrow as pa

    name = compression.lower() if isinstance(compression, str) else None
    if name not in _CODECS:
        raise ValueError(f"{fn}: compression must be one of {', '.join(_CODECS)}, got {compression!r}")
    if name != "none" and not pa.Codec.is_available(name):
        raise ValueError(f"{fn}: compression {name!r} is not available in this pyarrow build")
    return name


def _stem(p) -> str:
    """The file stem of a path or a URI."""
    if is_uri(p):
        import posixpath

        return posixpath.splitext(posixpath.basename(p.split("?")[0].rstrip("/")))[0]
    return Path(p).stem


def _label_to_uri(fn: str, inputs, model, out_uri: str, kw: dict) -> LabelReport:
    """:func:`label` into ``out_uri`` on a pyarrow filesystem: the labels files and manifest already there are
    copied into a local staging directory (so a rerun skips finished shards exactly as locally), labeling runs
    there, and each finished labels file is published to the store as soon as it is complete (a temporary
    object, then a move); the manifest is published last."""
    import shutil

    import pyarrow.fs as pafs

    from ._io import atomic_uri, download, open_uri, uri_join

    fs, key = open_uri(out_uri, fn)
    info = fs.get_file_info(key)
    if info.type == pafs.FileType.File:
        raise ValueError(f"{fn}: out_dir {out_uri} is a file, not a directory")
    stage = tempfile.mkdtemp(prefix="hermes-label-")
    try:
        if info.type == pafs.FileType.Directory:
            for f in fs.get_file_info(pafs.FileSelector(key.rstrip("/"))):
                name = f.path.rsplit("/", 1)[-1]
                if f.type == pafs.FileType.File and not name.startswith(".") and \
                        (name.endswith(".parquet") or name == MANIFEST):
                    download(uri_join(out_uri, name), os.path.join(stage, name), fn)

        def publish(local: Path) -> None:
            atomic_uri(uri_join(out_uri, Path(local).name), lambda tmp: shutil.copyfile(local, tmp), fn)

        ray_options = dict(kw.pop("ray_options") or {})
        if kw.get("engine") == "ray":  # actors on every node publish their parts to the store, not to this host
            ray_options.setdefault("parts_root", uri_join(out_uri, ".hermes-parts"))
        rep = label(inputs, model, stage, ray_options=ray_options, _publish=publish, **kw)
        rep.out_dir = out_uri
        return rep
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _check_label_outputs(fn: str, inputs, paths: list, model_path, out_dir: Path) -> None:
    """Refuses an out_dir whose outputs would replace an input shard, the model, or a foreign manifest."""
    from ._io import Output, check_outputs, owns_json_format

    given = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
    ins = [("the input shard", p) for p in paths] + [("the input", p) for p in given] + [("the model", model_path)]
    outs = [Output("out_dir", out_dir, is_dir=True),
            Output("manifest", out_dir / MANIFEST, owns_json_format(LABEL_FORMAT), kind="a hermes labels manifest")]
    outs += [Output(f"output of {_stem(p)}", out_dir / (_stem(p) + ".parquet"), lambda _: True) for p in paths]
    check_outputs(fn, outs, ins)
    for p in (Path(g) for g in given if not is_uri(g)):
        if p.is_dir() and out_dir.exists() and os.path.samefile(p, out_dir):
            raise ValueError(f"{fn}: out_dir {out_dir} is the input directory {p}; the labels would be read back as "
                             f"input shards: give the labels their own directory")


def _check_other_labels(fn: str, out_dir: Path, fp: str, mine: set) -> None:
    """Refuses an out_dir holding labels of another model that this run does not relabel (the manifest, which
    lists every labels file of the directory, could not describe them)."""
    if not out_dir.is_dir():
        return
    for f in sorted(out_dir.glob("*.parquet")):
        if f.name.startswith(".") or f.name in mine:
            continue
        meta, _ = _read_meta(f)
        if meta is not None and meta.get("format") == LABEL_FORMAT and meta.get("model", {}).get("fingerprint") != fp:
            raise ValueError(f"{fn}: {out_dir} already holds {f.name}, labeled by another model (fingerprint "
                             f"{meta.get('model', {}).get('fingerprint')}, this model: {fp}), which this run would "
                             f"not relabel; use another out_dir or remove the other model's labels")


def _scan_manifest(fn: str, out_dir: Path, fp: str, entries: list) -> list:
    """The manifest's shards: every hermes labels file in out_dir, each described by its own metadata (so the
    manifest says exactly what the directory holds). Files listed by an earlier manifest come first in its
    order, then other labels files found (sorted), then this run's shards in input order."""
    mine = [e["output"] for e in entries]
    try:
        prev = [e["output"] for e in json.loads((out_dir / MANIFEST).read_text()).get("shards", [])]
    except (OSError, ValueError, AttributeError, KeyError, TypeError):
        prev = []
    found = sorted(f.name for f in out_dir.glob("*.parquet") if not f.name.startswith("."))
    order = [n for n in dict.fromkeys(prev + found) if n in found and n not in mine] + mine
    out = []
    for name in order:
        meta, rows = _read_meta(out_dir / name)
        if meta is None or meta.get("format") != LABEL_FORMAT:
            continue  # not a labels file (read_labels never reads it: it follows the manifest)
        if meta.get("model", {}).get("fingerprint") != fp:
            raise ValueError(f"{fn}: {out_dir / name} was labeled by another model; the manifest cannot list it")
        out.append({"source": meta.get("source"), "source_fingerprint": meta.get("source_fingerprint"),
                    "output": name, "rows": int(rows)})
    return out


def _label_shard(fn, s: Shard, model: Model, out: Path, meta: dict, batch_size: int, device: str,
                 compression: str, bar) -> None:
    """Labels one shard into a hidden temporary file in out's directory, then renames it to ``out``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from .assign import assign_codes, assign_codes_pipelined

    for stale in glob.glob(str(out.parent / f".{glob.escape(out.name)}.*.tmp")):
        os.unlink(stale)  # left by a killed run
    schema = _schema(model.levels, meta)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    os.close(fd)
    writer = None
    try:
        writer = pq.ParquetWriter(tmp, schema, compression=compression)
        batches = s.batches(batch_size)
        if device == "cpu":
            codes_iter = ((lo, assign_codes(xb, model, batch_size=min(batch_size, 8192), progress=False))
                          for lo, xb in batches)
        else:
            codes_iter = assign_codes_pipelined(batches, model, device, batch_size, model.d)
        # rows labeled; codes not yet written (readers may yield batches smaller than batch_size: they are written
        # batch_size rows to a row group, as before)
        rows, pending, npending = 0, [], 0

        def flush():
            nonlocal npending
            lo0 = pending[0][0]
            codes = pending[0][1] if len(pending) == 1 else np.concatenate([c for _, c in pending])
            pending.clear()
            npending = 0
            writer.write_table(_label_table(codes, model.levels, lo0, schema))
            _on_batch_written(str(s.path), lo0 + codes.shape[0])

        while True:
            try:
                item = next(codes_iter)
            except StopIteration:
                break
            except ValueError as e:
                msg = str(e)
                if msg.startswith(f"{fn}:"):
                    raise
                m = _BAD_ROW.match(msg)
                if m:  # assign_codes and the CUDA pipeline name the row within the batch
                    raise ValueError(f"{fn}: {s.path}: row {rows + int(m.group(1))}{m.group(2)}") from None
                raise ValueError(f"{fn}: {s.path}: {msg}") from None
            lo, codes = item
            pending.append((lo, codes))
            npending += codes.shape[0]
            rows += codes.shape[0]
            bar.update(codes.shape[0])
            if npending >= batch_size:
                flush()
        if pending:
            flush()
        if rows != s.n:
            raise ValueError(f"{fn}: {s.path} yielded {rows} rows, expected {s.n} (truncated?)")
        writer.close()
        writer = None
        fsync_path(tmp)
        publish_mode(tmp)
        os.replace(tmp, out)
    except BaseException as e:
        if writer is not None:
            try:
                writer.close()
            except Exception:
                pass
        if os.path.exists(tmp):
            os.unlink(tmp)
        err = user_os_error(e, out, tmp, only_tmp=True)
        if err is not None:
            raise err from None
        raise


_BAD_ROW = re.compile(r"^(?:\w+: )?x row (\d+)( .*)$", re.S)  # a row-within-the-batch message


# ----------------------------------------------------------------------------------- read labels
@dataclass
class Labels:
    """Labels read back from :func:`label` outputs, concatenated in shard order.

    codes ``[N, L]`` int32; levels (K_1..K_L); rows ``[N]`` int64 row id within its shard; shard ``[N]`` int32
    index into ``files`` / ``sources`` / ``shards`` (label file path, source path, source file name).
    """

    codes: np.ndarray
    levels: tuple
    rows: np.ndarray
    shard: np.ndarray
    files: list
    sources: list
    shards: list
    model: dict

    def column(self, name: str, fn: str = "column") -> np.ndarray:
        """A per-row column ``[N]``: from the labels files when they hold it, else from their parquet sources."""
        import pyarrow.parquet as pq

        parts = []
        for i, (f, src) in enumerate(zip(self.files, self.sources)):
            rows = self.rows[self.shard == i]
            names = pq.read_schema(f).names
            if name in names:
                parts.append(pq.read_table(f, columns=[name]).column(0).to_numpy())
                continue
            if not (src and src.endswith(".parquet") and os.path.isfile(src)):
                raise ValueError(f"{fn}: column {name!r} is not in {f}, and its source {src} is not an existing "
                                 f"parquet file that could hold it")
            try:
                names = pq.read_schema(src).names
            except Exception as e:
                raise ValueError(f"{fn}: source {src} is not a readable parquet file: {e}") from None
            if name not in names:
                raise ValueError(f"{fn}: column {name!r} is neither in {f} nor in its source {src} "
                                 f"(columns: {names[:12]})")
            col = pq.read_table(src, columns=[name]).column(0)
            if len(col) <= (int(rows.max()) if rows.size else -1):
                raise ValueError(f"{fn}: source {src} has {len(col)} rows but {f} refers to row {int(rows.max())}")
            a = col.to_numpy(zero_copy_only=False)
            parts.append(a[rows])
        return np.concatenate(parts) if parts else np.zeros(0)


def _label_files(fn: str, paths) -> list[tuple[Path, dict | None]]:
    """(labels file, its manifest entry or None) for labels files and directories (manifest order, else sorted)."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    out = []
    for p in map(Path, paths):
        if p.is_dir():
            man = p / MANIFEST
            if man.is_file():
                try:
                    doc = json.loads(man.read_text())
                    if doc.get("format") != LABEL_FORMAT:
                        raise ValueError(f"format is {doc.get('format')!r}, not {LABEL_FORMAT!r}")
                    files = [(p / e["output"], e) for e in doc["shards"]]
                    if any(Path(e["output"]).name != e["output"] for e in doc["shards"]):
                        raise ValueError("an output names a file outside the directory")
                except (ValueError, KeyError, TypeError, AttributeError) as e:
                    raise ValueError(f"{fn}: {man} is not a valid hermes manifest: {e}") from None
            else:
                files = [(q, None) for q in sorted(p.glob("*.parquet")) if not q.name.startswith(".")]
            if not files:
                raise ValueError(f"{fn}: directory {p} holds no labels (.parquet) files")
            out += files
        elif not p.is_file():
            raise FileNotFoundError(f"{fn}: no such labels file or directory: {p}")
        else:
            out.append((p, None))
    if not out:
        raise ValueError(f"{fn}: no labels files given")
    return out


def _meta_levels(fn: str, f: Path, meta: dict) -> tuple:
    """The model levels a labels file's metadata records, checked: a list of 1 to 8 integers >= 1."""
    m = meta.get("model")
    lv = m.get("levels") if isinstance(m, dict) else None
    if not (isinstance(lv, list) and 1 <= len(lv) <= 8 and all(type(k) is int and k >= 1 for k in lv)) or \
            not isinstance(m.get("fingerprint"), str):
        raise ValueError(f"{fn}: {f}: metadata 'hermes' key 'model' must hold 'levels' (a list of 1 to 8 integers "
                         f">= 1) and 'fingerprint' (a string), got {m!r:.200}")
    return tuple(lv)


def _checked_codes(fn: str, f: Path, t, cols: list, levels: tuple) -> np.ndarray:
    """codes [n, L] int32 from a labels table; errors name the file, column and row of a null, non-integer or
    out-of-range code."""
    import pyarrow as pa

    out = np.empty((t.num_rows, len(levels)), np.int32)
    for l, c in enumerate(cols[1:]):
        col = t.column(c)
        if col.null_count or not pa.types.is_integer(col.type):
            raise ValueError(f"{fn}: {f}: column {c} must hold integers without nulls, got {col.type} "
                             f"({col.null_count} nulls)")
        a = col.to_numpy()
        bad = np.flatnonzero((a < 0) | (a >= levels[l]))
        if bad.size:
            raise ValueError(f"{fn}: {f}: column {c} row {int(bad[0])} is {int(a[bad[0]])}, outside [0, {levels[l]})")
        out[:, l] = a
    return out


def read_labels(paths, *, fn: str = "read_labels") -> Labels:
    """Reads :func:`label` outputs (files, or directories: in manifest order, else sorted) into :class:`Labels`.

    Paths may be URIs on a pyarrow filesystem (``s3://bucket/labels``): their manifest and labels files are
    copied to a temporary directory and read from there; ``files`` then names the URIs.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    if any(is_uri(p) for p in paths):
        return _read_labels_uri(list(paths), fn)
    import pyarrow.parquet as pq

    codes, rows, shard, files, sources, shard_names = [], [], [], [], [], []
    levels = model = None
    for i, (f, entry) in enumerate(_label_files(fn, paths)):
        if not f.is_file():
            raise FileNotFoundError(f"{fn}: {f} (listed in the manifest) does not exist")
        meta, nrows = _read_meta(f)
        if meta is None or meta.get("format") != LABEL_FORMAT:
            raise ValueError(f"{fn}: {f} is not a hermes labels file (no '{META_KEY.decode()}' schema metadata, "
                             f"or unreadable)")
        if entry is not None and (entry.get("rows") != nrows or entry.get("source") != meta.get("source") or
                                  entry.get("source_fingerprint") != meta.get("source_fingerprint")):
            raise ValueError(f"{fn}: the manifest of {f.parent} says {f.name} holds {entry.get('rows')} rows of "
                             f"{entry.get('source')} (fingerprint {entry.get('source_fingerprint')}), the file holds "
                             f"{nrows} rows of {meta.get('source')} ({meta.get('source_fingerprint')}); rerun "
                             f"hermes label into that directory to rewrite the manifest")
        lv = _meta_levels(fn, f, meta)
        if levels is None:
            levels, model = lv, meta["model"]
        elif lv != levels or meta["model"].get("fingerprint") != model.get("fingerprint"):
            raise ValueError(f"{fn}: {f} was labeled by another model (levels {lv}, fingerprint "
                             f"{meta['model'].get('fingerprint')}) than {files[0]} (levels {levels}, fingerprint "
                             f"{model.get('fingerprint')})")
        cols = ["row"] + [f"c{l + 1}" for l in range(len(lv))]
        try:
            t = pq.read_table(f, columns=cols)
        except Exception as e:
            raise ValueError(f"{fn}: {f} could not be read (columns {cols}): {e}") from None
        c = _checked_codes(fn, f, t, cols, lv)
        codes.append(c)
        rows.append(t.column("row").to_numpy().astype(np.int64))
        shard.append(np.full(t.num_rows, i, np.int32))
        files.append(str(f))
        sources.append(meta.get("source"))
        shard_names.append(meta.get("shard") or Path(str(meta.get("source"))).name)
    return Labels(codes=np.concatenate(codes), levels=levels, rows=np.concatenate(rows), shard=np.concatenate(shard),
                  files=files, sources=sources, shards=shard_names, model=model)


def _read_labels_uri(paths: list, fn: str) -> Labels:
    """read_labels over URIs: each URI (a labels file, or a directory: its manifest's files, else its *.parquet)
    is copied into a temporary directory, read there, and reported under its URI."""
    import shutil

    import pyarrow.fs as pafs

    from ._io import download, open_uri, uri_join

    stage = tempfile.mkdtemp(prefix="hermes-labels-")
    try:
        local, back = [], {}
        for i, p in enumerate(paths):
            if not is_uri(p):
                local.append(p)
                continue
            fs, key = open_uri(p, fn)
            info = fs.get_file_info(key)
            d = os.path.join(stage, str(i))
            os.makedirs(d)
            if info.type == pafs.FileType.File:
                name = key.rsplit("/", 1)[-1]
                download(p, os.path.join(d, name), fn)
                local.append(os.path.join(d, name))
                back[os.path.join(d, name)] = p
                continue
            if info.type == pafs.FileType.NotFound:
                raise FileNotFoundError(f"{fn}: no such labels file or directory: {p}")
            names = [f.path.rsplit("/", 1)[-1] for f in fs.get_file_info(pafs.FileSelector(key.rstrip("/")))
                     if f.type == pafs.FileType.File]
            if MANIFEST in names:
                download(uri_join(p, MANIFEST), os.path.join(d, MANIFEST), fn)
                try:
                    want = [e["output"] for e in json.loads(Path(d, MANIFEST).read_text())["shards"]]
                except (ValueError, KeyError, TypeError) as e:
                    raise ValueError(f"{fn}: {uri_join(p, MANIFEST)} is not a valid hermes manifest: {e}") from None
            else:
                want = sorted(n for n in names if n.endswith(".parquet") and not n.startswith("."))
            for name in want:
                if name in names:
                    download(uri_join(p, name), os.path.join(d, name), fn)
                back[os.path.join(d, name)] = uri_join(p, name)
            local.append(d)
        lab = read_labels(local, fn=fn)
        lab.files = [back.get(f, f) for f in lab.files]
        return lab
    finally:
        shutil.rmtree(stage, ignore_errors=True)
