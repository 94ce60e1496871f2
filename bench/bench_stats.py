"""Corpus-scale `hermes stats --embeddings`: wall time and peak RSS on N x d float16 (default 2M x 1024, 4 GB).

Generates clustered float16 embeddings into one .npy (chunk by chunk), fits a plain RVQ model on a 20k sample,
labels every row with `hermes label`, then runs `hermes stats LABELS --embeddings E` under /usr/bin/time -v
(streaming: per-bucket sums over row blocks, Recall@k over seeded queries against all N, screened by a bf16 GEMM
where the CPU multiplies bf16 natively). Prints the search's GEMM time at torch's float32 (and bf16) rate measured
in the same run. Targets: < 1.5 GB RSS, < 60 s on 2 cores. The old in-memory path (the whole matrix as float32 plus
copies) is reported as its estimated floor, 4 bytes * N * d * 2, not run.

    python bench/bench_stats.py --n 2000000 --d 1024 --dir /tmp/hermes_stats_bench
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import clustered_unit_vectors, hermes_origin, timeit  # noqa: E402


def _hermes(*args) -> list:
    """`python -m hermes ARGS` with the hermes this script imports (installed wheel or the source tree)."""
    return [sys.executable, "-m", "hermes", *map(str, args)]


def _env() -> dict:
    import hermes

    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(Path(hermes.__file__).resolve().parents[1]), env.get("PYTHONPATH", "")])
    return env


def _gemm_rate(q: int, d: int, dtype: str, cols: int = 8192) -> float:
    """FLOP/s of torch.mm at the Recall@k search's block shape ([q, d] x [d, cols], as metrics._KnnSearch runs
    it) in float32 or bfloat16, median of 5 (torch's default threads)."""
    import torch

    a, b = torch.randn(q, d).to(getattr(torch, dtype)), torch.randn(cols, d).to(getattr(torch, dtype))
    return 2.0 * q * d * cols / timeit(lambda: torch.mm(a, b.T), repeats=5)


def _rates(q: int, d: int, bf16: bool) -> dict:
    return {"float32": _gemm_rate(q, d, "float32"), **({"bfloat16": _gemm_rate(q, d, "bfloat16")} if bf16 else {})}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=2_000_000)
    ap.add_argument("--d", type=int, default=1024)
    ap.add_argument("--dir", default="/tmp/hermes_stats_bench")
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--extra", default="", help="extra `hermes stats` arguments, e.g. '--sample 200000'")
    a = ap.parse_args()
    root = Path(a.dir).resolve()  # the children run in root (below), so they import the hermes this script did
    root.mkdir(parents=True, exist_ok=True)
    emb = root / f"emb_{a.n}x{a.d}.f16.npy"
    if not emb.exists():
        t = time.perf_counter()
        tmp = emb.with_suffix(".tmp.npy")
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16, shape=(a.n, a.d))
        step = 262_144
        for lo in range(0, a.n, step):
            m = min(step, a.n - lo)
            out[lo:lo + m] = clustered_unit_vectors(m, a.d, centers=4096, noise=1.0, seed=lo)
        out.flush()
        del out
        os.replace(tmp, emb)
        print(f"generated {emb} in {time.perf_counter() - t:.0f} s")
    model = root / f"rvq_{a.d}.safetensors"
    if not model.exists():
        subprocess.run(_hermes("fit", emb, "--out", model, "--method", "residual_kmeans", "--sample", "20000", "--no-progress"),
                       check=True, env=_env(), cwd=root)
    labels = root / "labels"
    if not (labels / "manifest.json").exists():
        t = time.perf_counter()
        subprocess.run(_hermes("label", "--model", model, "--out", labels, emb, "--no-progress"), check=True, env=_env(), cwd=root)
        print(f"labeled in {time.perf_counter() - t:.0f} s")
    cmd = ["/usr/bin/time", "-v"] + _hermes("stats", labels, "--embeddings", emb, "--queries", a.queries,
                                            "--no-progress") + a.extra.split()
    print(f"# {hermes_origin()}")
    print("$ hermes", " ".join(cmd[5:]))
    from hermes.assign import _cpu_has_fast_bf16
    bf16 = _cpu_has_fast_bf16()  # hermes stats screens the search with a bf16 GEMM (float32 neighbours)
    rate0 = _rates(a.queries, a.d, bf16)
    r = subprocess.run(cmd, capture_output=True, text=True, env=_env(), cwd=root)
    rates = {k: max(v, w) for (k, v), w in zip(rate0.items(), _rates(a.queries, a.d, bf16).values())}
    print(r.stdout)
    if r.returncode:
        print(r.stderr)
        raise SystemExit(r.returncode)
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", r.stderr).group(1)) / 2**20
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (\S+)", r.stderr).group(1)
    parts = [float(p) for p in wall.split(":")]
    secs = sum(p * 60 ** i for i, p in enumerate(reversed(parts)))
    cpu = sum(float(re.search(rf"{k} time \(seconds\): (\S+)", r.stderr).group(1)) for k in ("User", "System"))
    floor = 4 * a.n * a.d * 2 / 2**30
    print(f"N={a.n:,} d={a.d} float16 ({emb.stat().st_size / 2**30:.2f} GiB): hermes stats {secs:.1f} s wall, "
          f"{cpu:.1f} s CPU (user + sys), peak RSS {rss:.2f} GiB (target < 1.5 GiB, < 60 s); the in-memory path needs >= {floor:.1f} GiB "
          f"({floor / rss:.1f}x); load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    flop = 2.0 * min(a.queries, a.n) * a.n * a.d
    for dtype, rate in rates.items():
        used = (dtype == "bfloat16") == bf16
        print(f"peer in the same run: torch.mm {dtype} at the Recall@k search's shape ([{a.queries}, {a.d}] x "
              f"[{a.d}, 8192]) at {rate / 1e9:.0f} GFLOP/s (best of before/after): the search's GEMM alone needs "
              f"{flop / rate:.1f} s in {dtype}; hermes stats wall / that = {secs / (flop / rate):.2f}x"
              f"{' (the GEMM hermes ran)' if used else ''}")


if __name__ == "__main__":
    main()
