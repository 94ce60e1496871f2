"""At-scale paths against their single-process peers, measured in one run (ratios, not absolute targets):

1. labeling rows/s: `hermes label --engine ray` with 2 CPU actors (1 CPU each) vs single-process `hermes label`
   on the same shards (the bundled 20k x 384 float16 embeddings, tiled to --rows);
2. fit wall time: `torchrun --nproc-per-node 2` (gloo) vs 1 process, same data and global minibatch;
3. read throughput: the same .npy and parquet shards read through hermes' readers from a local S3 server
   (moto, pyarrow S3FileSystem over HTTP) vs from local disk.

    python bench/bench_scale.py --rows 100000
"""
from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def _env():
    import hermes

    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(Path(hermes.__file__).resolve().parents[1]), env.get("PYTHONPATH", "")])
    return env


def _hermes(*args, cwd, extra=()):
    t = time.perf_counter()
    r = subprocess.run([sys.executable, *extra, "-m", "hermes", *map(str, args)], env=_env(), cwd=cwd,
                       capture_output=True, text=True)
    if r.returncode:
        raise SystemExit(r.stdout + r.stderr)
    return time.perf_counter() - t, r.stdout


def _port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--fit-rows", type=int, default=20_000)
    a = ap.parse_args()
    import pyarrow as pa
    import pyarrow.parquet as pq

    import hermes

    d = Path(tempfile.mkdtemp(prefix="hermes-scale-"))
    try:
        x = np.load(ROOT / "examples" / "data" / "pypi_minilm_20k.f16.npy")
        big = np.tile(x, (a.rows // len(x) + 1, 1))[:a.rows]
        half = a.rows // 2
        np.save(d / "s0.npy", big[:half])
        np.save(d / "s1.npy", big[half:])
        model = hermes.fit(x[:5000].astype(np.float32), (256, 256, 256), method="residual_kmeans", progress=False)
        model.save(d / "m.safetensors")
        print(f"CPUs: {os.cpu_count()}, load average {os.getloadavg()[0]:.1f}; {a.rows:,} x {x.shape[1]} float16 in "
              f"2 shards, levels 256,256,256")

        # 1. labeling
        common = ["--model", d / "m.safetensors", "--no-progress", "--device", "cpu", d / "s0.npy", d / "s1.npy"]
        t_local, _ = _hermes("label", "--out", d / "local", *common, cwd=d)
        t_ray, out = _hermes("label", "--out", d / "ray", "--engine", "ray", "--concurrency", "2",
                             "--num-cpus-per-worker", "1", "--batch-size", "25000", *common, cwd=d)
        same = np.array_equal(hermes.read_labels(d / "local").codes, hermes.read_labels(d / "ray").codes)
        print(f"label   single process: {a.rows / t_local:,.0f} rows/s ({t_local:.1f} s, incl. start-up)")
        print(f"label   ray, 2 actors : {a.rows / t_ray:,.0f} rows/s ({t_ray:.1f} s, incl. starting Ray) "
              f"-> {t_local / t_ray:.2f}x; codes equal: {same}")

        # 2. fit
        np.save(d / "fit.npy", np.tile(x, (a.fit_rows // len(x) + 1, 1))[:a.fit_rows])
        fa = ["fit", d / "fit.npy", "--epochs", "2", "--batch-size", "1024", "--seed", "0", "--no-progress",
              "--device", "cpu"]
        t1, _ = _hermes(*fa, "--out", d / "f1.safetensors", cwd=d)
        t2, _ = _hermes(*fa[:5], "512", *fa[6:], "--out", d / "f2.safetensors", cwd=d,
                        extra=["-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
                               "--master-port", str(_port())])
        print(f"fit     1 process: {t1:.1f} s; torchrun 2 gloo ranks (same global batch 1024): {t2:.1f} s "
              f"-> {t1 / t2:.2f}x ({a.fit_rows:,} rows, 2 epochs, incl. start-up)")

        # 3. reads: local disk vs a local S3 server
        pq.write_table(pa.table({"embedding": pa.FixedSizeListArray.from_arrays(pa.array(big[:half].reshape(-1)),
                                                                                 x.shape[1])}),
                       d / "s0.parquet", row_group_size=10_000)
        port = _port()
        srv = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            for _ in range(300):
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                    break
                except OSError:
                    time.sleep(0.2)
            os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench",
                              AWS_DEFAULT_REGION="us-east-1", AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}")
            import boto3

            s3 = boto3.client("s3")
            s3.create_bucket(Bucket="bench")
            for name in ("s0.npy", "s0.parquet"):
                s3.upload_file(str(d / name), "bench", name)
            from hermes.readers import open_shard

            for name in ("s0.npy", "s0.parquet"):
                rates = {}
                for where, src in (("disk", d / name), ("s3", f"s3://bench/{name}")):
                    t = time.perf_counter()
                    s = open_shard(src)
                    n = sum(np.asarray(b, dtype=np.float32).shape[0] for _, b in s.batches(16384))  # touch
                    rates[where] = n / (time.perf_counter() - t)
                    s.close()
                mb = big[:half].nbytes / half / 2**20
                print(f"read    {name:10s}: disk {rates['disk']:,.0f} rows/s ({rates['disk'] * mb:,.0f} MiB/s), "
                      f"local S3 server {rates['s3']:,.0f} rows/s ({rates['s3'] * mb:,.0f} MiB/s) "
                      f"-> S3/disk {rates['s3'] / rates['disk']:.2f}")
        finally:
            srv.terminate()
            srv.wait()
    finally:
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    main()
