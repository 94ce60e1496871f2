"""Atomic file output: write to a temporary name beside the target, then rename, so no reader (and no rerun
after a killed process) ever sees a half-written file."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path


def publish_mode(path) -> None:
    """Gives a mkstemp file (0600) the mode a plain open() would have (0666 minus the umask)."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(path, 0o666 & ~mask)


def fsync_path(path) -> None:
    """Flushes a written file to disk before it is renamed into place."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_path(path, write) -> None:
    """Calls ``write(tmp_path)`` on a temporary file next to ``path``, then fsyncs it, gives it the usual
    permissions and renames it to ``path``. On any error (or interrupt) the temporary file is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        fsync_path(tmp)
        publish_mode(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
