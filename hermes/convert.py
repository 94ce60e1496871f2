"""convert: rewrite embedding shards (parquet, safetensors, .npy) as ``.npy`` files, the fastest format to label.

A ``.npy`` shard is memory-mapped by :mod:`hermes.readers`: nothing is decoded, and ``hermes label`` runs at
the pace of the assignment. A parquet list column is decoded value by value by pyarrow (repetition and
definition levels), several times slower than labeling on a CPU (README: "Input formats"). Converting once
pays that decode once.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ._io import Output, atomic_path, check_outputs
from .readers import DEFAULT_BATCH, expand_inputs, open_shard

__all__ = ["convert", "ConvertReport"]

_DTYPES = ("float16", "float32")


@dataclass
class ConvertReport:
    """What :func:`convert` wrote: one ``.npy`` path per input shard, in input order."""

    outputs: list = field(default_factory=list)
    rows: int = 0
    seconds: float = 0.0


def _npy_owner(path: Path) -> bool:
    """True when ``path`` is a readable ``.npy`` file (the only kind --overwrite may replace)."""
    try:
        with open(path, "rb") as f:
            np.lib.format.read_magic(f)
        return True
    except (OSError, ValueError):
        return False


def convert(inputs, out_dir, *, column: str = "embedding", tensor: str | None = None, dtype: str | None = None,
            batch_size: int = DEFAULT_BATCH, overwrite: bool = False, progress: bool = True,
            fn: str = "convert") -> ConvertReport:
    """Writes every input shard as ``out_dir/<stem>.npy`` (``[N, d]``, C order), streaming in bounded memory.

    Args:
        inputs: a path or a list of paths (``.parquet`` with the list column ``column``, ``.safetensors``,
            ``.npy``), or directories of them.
        out_dir: output directory (created).
        column: parquet column holding the embeddings.
        tensor: safetensors tensor name (default: the file's only 2-d tensor).
        dtype: ``"float16"`` or ``"float32"``; default: the input's (bfloat16 and float64 become float32).
        batch_size: rows read and written at a time.
        overwrite: replace an existing ``.npy`` output (never an input, never a file of another kind).
        progress: show a progress bar on stderr.

    Returns:
        a :class:`ConvertReport` (output paths, rows, seconds).

    Raises:
        ValueError naming the file (and row) for an unreadable shard, two inputs with the same stem, an output
        that is an input or exists, or a value that overflows float16; each output appears only when complete.
    """
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    if dtype is not None and dtype not in _DTYPES:
        raise ValueError(f"{fn}: dtype must be one of {', '.join(_DTYPES)} or None, got {dtype!r}")
    if not isinstance(batch_size, (int, np.integer)) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"{fn}: batch_size must be a positive integer, got {batch_size!r}")
    paths = expand_inputs(fn, inputs)
    out_dir = Path(out_dir)
    names: dict[str, Path] = {}
    for p in paths:
        name = p.stem + ".npy"
        if name in names:
            raise ValueError(f"{fn}: inputs {names[name]} and {p} would both write {name}; give shards distinct "
                             f"stems or convert them into different out_dirs")
        names[name] = p
    outputs = [Output("output", out_dir / name, None, kind="a .npy file") for name in names]
    check_outputs(fn, [Output("out_dir", out_dir, is_dir=True)] + outputs,
                  [("the input", p) for p in paths], overwrite=overwrite)
    for o in outputs:  # .npy files carry no mark of their writer: only --overwrite replaces one, never another kind
        if o.path.exists() and not _npy_owner(o.path):
            raise ValueError(f"{fn}: output {o.path} exists and is not a .npy file; refusing to replace it "
                             f"(remove it or choose another out_dir)")
    shards = [open_shard(p, column=column, tensor=tensor, fn=fn) for p in paths]  # every shard checked first
    report = ConvertReport()
    with tqdm(total=sum(s.n for s in shards), unit="rows", unit_scale=True, desc="convert",
              disable=not progress, dynamic_ncols=True) as bar:
        for s, o in zip(shards, outputs):
            want = np.dtype(dtype or ("float32" if s.dtype in ("bfloat16", "float64") else s.dtype))
            atomic_path(o.path, lambda tmp, s=s: _write_npy(fn, s, tmp, want, batch_size, bar))
            report.outputs.append(o.path)
            report.rows += s.n
            s.close()
    report.seconds = time.perf_counter() - t0
    return report


def _write_npy(fn: str, s, tmp: str, dtype: np.dtype, batch_size: int, bar) -> None:
    """Streams shard ``s`` into the .npy file ``tmp``: header, then every batch as raw C-order rows."""
    with open(tmp, "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": np.lib.format.dtype_to_descr(dtype),
                                                 "fortran_order": False, "shape": (s.n, s.d)})
        rows = 0
        for lo, b in s.batches(batch_size):
            with np.errstate(over="ignore"):  # an overflow is reported below, naming the row
                out = np.ascontiguousarray(b, dtype=dtype)
            if out.dtype.itemsize < np.dtype(b.dtype).itemsize:
                bad = ~np.isfinite(out) & np.isfinite(b)
                if bad.any():
                    r = int(np.flatnonzero(bad.any(axis=1))[0])
                    raise ValueError(f"{fn}: {s.path}: row {lo + r} has a value beyond the {dtype} range "
                                     f"({b[r][bad[r]][0]!r}); convert with dtype float32")
            f.write(memoryview(out).cast("B"))
            rows += out.shape[0]
            bar.update(out.shape[0])
        if rows != s.n:
            raise ValueError(f"{fn}: {s.path} yielded {rows} rows, expected {s.n} (truncated?)")
