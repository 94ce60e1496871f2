"""Shared helpers for the bench scripts: synthetic clustered data, timing with medians, table printing."""
from __future__ import annotations

import statistics
import time

import numpy as np


def clustered_unit_vectors(n: int, d: int, *, centers: int = 1000, noise: float = 0.5, seed: int = 0,
                           chunk: int = 65536) -> np.ndarray:
    """[n, d] float32 unit vectors drawn around `centers` random unit directions (generated in chunks)."""
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((centers, d)).astype(np.float32)
    c /= np.linalg.norm(c, axis=1, keepdims=True)
    out = np.empty((n, d), dtype=np.float32)
    for lo in range(0, n, chunk):
        m = min(chunk, n - lo)
        v = c[rng.integers(0, centers, m)] + (noise / np.sqrt(d)) * rng.standard_normal((m, d), dtype=np.float32)
        out[lo:lo + m] = v / np.linalg.norm(v, axis=1, keepdims=True)
    return out


def timeit(fn, *, repeats: int = 3, warmup: int = 1, sync=None) -> float:
    """Median wall seconds of fn() over `repeats` runs after `warmup` runs (sync() called around each)."""
    for _ in range(warmup):
        fn()
        if sync:
            sync()
    times = []
    for _ in range(repeats):
        if sync:
            sync()
        t0 = time.perf_counter()
        fn()
        if sync:
            sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def print_table(rows, headers):
    widths = [max(len(str(h)), *(len(str(r[i])) for r in rows)) for i, h in enumerate(headers)]
    line = "  ".join(str(h).ljust(w) for h, w in zip(headers, widths))
    print(line)
    print("-" * len(line))
    for r in rows:
        print("  ".join(str(v).ljust(w) for v, w in zip(r, widths)))


def hermes_origin() -> str:
    """Which hermes a bench measures: ``python bench/X.py`` puts bench/ first on sys.path, so it imports the
    installed package, not this checkout (set PYTHONPATH=. after a dev build to measure the source tree)."""
    import os

    import hermes

    return f"hermes {hermes.__version__} from {os.path.dirname(os.path.abspath(hermes.__file__))}"
