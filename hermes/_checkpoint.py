"""Fit checkpoints: one file per run directory, written atomically, with a fingerprint of the
configuration and of the data so a resume on something else fails with a clear error."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from ._io import atomic_path
from ._sources import _gather_rows, _Source, _torch

CHECKPOINT_NAME = "hermes_fit.ckpt"
CHECKPOINT_FORMAT = 1


class _Checkpoint:
    """One checkpoint file per run directory, written atomically (temp file + os.replace)."""

    def __init__(self, directory, fingerprint: str, config: dict):
        self.dir = Path(directory)
        self.path = self.dir / CHECKPOINT_NAME
        self.fingerprint, self.config = fingerprint, config

    def save(self, state: dict) -> None:
        torch = _torch()
        self.dir.mkdir(parents=True, exist_ok=True)
        blob = {"format": CHECKPOINT_FORMAT, "fingerprint": self.fingerprint,
                "config": json.dumps(self.config, sort_keys=True), **state}
        atomic_path(self.path, lambda tmp: torch.save(blob, tmp))

    def load(self):
        torch = _torch()
        if not self.path.is_file():
            return None
        try:
            blob = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise ValueError(f"fit: checkpoint {self.path} is not readable ({e})") from e
        if not isinstance(blob, dict) or blob.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"fit: {self.path} is not a hermes fit checkpoint (format "
                             f"{blob.get('format') if isinstance(blob, dict) else None!r})")
        if blob.get("fingerprint") != self.fingerprint:
            try:
                old = json.loads(blob.get("config", "{}"))
            except ValueError:
                old = {}
            diff = sorted(k for k in set(old) | set(self.config) if old.get(k) != self.config.get(k))
            raise ValueError(f"fit: checkpoint {self.path} was written by a different configuration "
                             f"(differs in: {', '.join(diff) or 'fingerprint'}); use another "
                             f"checkpoint_dir or resume=False to start over")
        return blob


def _data_fingerprint(src: _Source) -> str:
    """A hash of N, d and a few rows (first, middle, last): catches resuming on different data cheaply."""
    h = hashlib.sha256(f"{src.N}x{src.d}".encode())
    rows = _gather_rows(src, np.array(sorted({0, src.N // 2, src.N - 1})))  # on every rank (a partition: from theirs)
    for r in rows.cpu().numpy():
        h.update(r.tobytes())
    return h.hexdigest()[:16]
