"""Scale-out labeling with Ray Data: ``label_dataset(ds, model)`` maps batches through assign_codes.

Ray is an optional dependency (``pip install 'hermes-rvq[ray]'``) and is imported only when called.
Each output batch gains the columns of :func:`hermes.label.label_columns` except ``row`` (Ray Data rows
carry no stable index): ``c1..cL`` and ``bucket_L1..``. Write the result with ``ds.write_parquet(...)``.
"""
from __future__ import annotations

import os

import numpy as np

from .model import Model, load

__all__ = ["label_dataset", "label_batch"]


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


def label_dataset(ds, model, column: str = "embedding", *, batch_size: int = 65536, device: str = "cpu",
                  keep_columns: bool = True, **map_batches_kwargs):
    """Lazily labels a ``ray.data.Dataset`` whose ``column`` holds ``[d]`` float embeddings.

    Args:
        ds: a ``ray.data.Dataset``.
        model: a :class:`hermes.Model` or the path of a saved one (loaded once here and shipped to workers).
        column: the embedding column.
        batch_size: rows per ``map_batches`` call.
        device: ``"cpu"`` or ``"cuda"`` (then pass e.g. ``num_gpus=1`` through ``map_batches_kwargs``).
        keep_columns: keep the input columns next to the labels (False: only ``c1..cL`` and ``bucket_*``).
        **map_batches_kwargs: passed to ``Dataset.map_batches`` (``concurrency``, ``num_gpus``, ...).

    Returns:
        the mapped ``ray.data.Dataset`` (nothing runs until it is consumed or written).
    """
    try:
        import ray.data  # noqa: F401
    except ImportError as e:
        raise ImportError("hermes.ray.label_dataset needs Ray Data: pip install 'ray[data]' "
                          "(or hermes-rvq[ray])") from e
    if isinstance(model, (str, os.PathLike)):
        model = load(model)
    if not isinstance(model, Model):
        raise TypeError(f"label_dataset: model must be a hermes.Model or a path, got {type(model).__name__}")
    return ds.map_batches(label_batch, batch_format="numpy", batch_size=batch_size,
                          fn_kwargs=dict(model=model, column=column, device=device, keep_columns=keep_columns),
                          **map_batches_kwargs)
