"""bench_fit: hermes.fit (method="hermes" and "rvq") against scikit-learn KMeans / MiniBatchKMeans and
faiss ResidualQuantizer -- bucket quality at L1 on real embeddings, reconstruction error, and fit speed.

    python bench/bench_fit.py --quick          # small: repo data, 20k x 256 synthetic
    python bench/bench_fit.py                  # full: repo data (20k x 384), 200k x 1024 synthetic
    python bench/bench_fit.py --shared         # sections 1-2 on the 50k shared rows instead (if present)

Sections:
1. Real data, L1 = 256 buckets, cosine assignment: exp(entropy of bucket sizes) and mean cosine of
   documents to their bucket's mean direction (hermes.metrics), for hermes, rvq, KMeans, MiniBatchKMeans
   and faiss RQ (its stage-1 codes). hermes and rvq must be within 2% of KMeans on both.
2. Real data, 3-stage reconstruction error: rvq with metric="l2" (faiss RQ is an L2 quantizer) vs faiss
   ResidualQuantizer (Train_default, max_beam_size = 1).
3. Synthetic clustered vectors: rvq (l2) fit time vs faiss RQ train time, reconstruction errors.
4. method="hermes" seconds per epoch and where the time goes (model.train_stats).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import hermes  # noqa: E402
from hermes.train import fit  # noqa: E402

SHARED = Path("/work/shared/data/pypi_summaries_minilm_50k.f16.npy")
REPO = ROOT / "examples/data/pypi_minilm_20k.f16.npy"


def effective_buckets(ids):
    try:
        from hermes.metrics import effective_buckets as f
        return f(ids)
    except ImportError:
        p = np.bincount(ids) / ids.size
        p = p[p > 0]
        return float(np.exp(-(p * np.log(p)).sum()))


def centroid_cosine(x, ids):
    try:
        from hermes.metrics import centroid_cosine as f
        return f(x, ids)
    except ImportError:
        u = x.astype(np.float64)
        u /= np.linalg.norm(u, axis=1, keepdims=True)
        s = np.zeros((ids.max() + 1, x.shape[1]))
        np.add.at(s, ids, u)
        return float(np.linalg.norm(s, axis=1).sum() / x.shape[0])


def faiss_rq(x, levels_bits, L):
    import faiss

    rq = faiss.ResidualQuantizer(x.shape[1], L, levels_bits)
    rq.train_type = faiss.ResidualQuantizer.Train_default
    rq.max_beam_size = 1
    t = time.perf_counter()
    rq.train(x)
    dt = time.perf_counter() - t
    codes = rq.compute_codes(x)
    rec = rq.decode(codes)
    err = float(((x - rec) ** 2).sum(1).mean())
    # unpack the first stage's code (nbits per stage, little-endian bit packing)
    bits = np.unpackbits(codes, axis=1, bitorder="little")[:, :levels_bits]
    c1 = (bits * (1 << np.arange(levels_bits))).sum(1)
    return dt, err, c1


def hermes_err(x, model):
    return float(hermes.quantization_error(x, model).mean())


def row(name, secs, eb, cc, ref_eb=None, ref_cc=None):
    rel = "" if ref_eb is None else f"{100 * (eb / ref_eb - 1):+6.2f}%  {100 * (cc / ref_cc - 1):+6.2f}%"
    print(f"  {name:<22} {secs:8.2f} s   exp(H) {eb:8.2f}   mean cos {cc:.4f}   {rel}")


def real_data(args):
    path = SHARED if (args.shared and SHARED.is_file()) else REPO
    x = np.load(path).astype(np.float32)
    if args.real_n:
        x = x[:args.real_n]
    n, d = x.shape
    K = 256
    print(f"\n[1] real data {path.name}: {n} x {d}, L1 = {K} buckets, cosine assignment "
          f"(last two columns: relative to KMeans)")
    from sklearn.cluster import KMeans, MiniBatchKMeans

    t = time.perf_counter()
    km = KMeans(K, n_init=1, random_state=0).fit(x)
    t_km = time.perf_counter() - t
    ids = km.labels_
    ref_eb, ref_cc = effective_buckets(ids), centroid_cosine(x, ids)
    row("sklearn KMeans", t_km, ref_eb, ref_cc, ref_eb, ref_cc)
    t = time.perf_counter()
    mb = MiniBatchKMeans(K, n_init=1, random_state=0, batch_size=4096).fit(x)
    row("sklearn MiniBatchKMeans", time.perf_counter() - t, effective_buckets(mb.labels_),
        centroid_cosine(x, mb.labels_), ref_eb, ref_cc)
    out = {}
    for method, kw in (("hermes", dict(epochs=args.epochs)), ("rvq", {})):
        t = time.perf_counter()
        m = fit(x, (K, K, K), method=method, metric="cos", progress=False, **kw)
        dt = time.perf_counter() - t
        c = hermes.assign_codes(x, m)[:, 0]
        eb, cc = effective_buckets(c), centroid_cosine(x, c)
        out[method] = (eb / ref_eb - 1, cc / ref_cc - 1)
        row(f"hermes.fit {method}", dt, eb, cc, ref_eb, ref_cc)
    dt, err_f, c1 = faiss_rq(x, 8, 3)
    row("faiss RQ (stage 1, L2)", dt, effective_buckets(c1), centroid_cosine(x, c1), ref_eb, ref_cc)
    for method, (a, b) in out.items():
        ok = abs(a) <= 0.02 and abs(b) <= 0.02
        print(f"  criterion {method}: within 2% of KMeans on both -> {'PASS' if ok else 'FAIL'}")

    print(f"\n[2] real data, 3 x 256 reconstruction error ||h - decode||^2 (rvq with metric='l2'; "
          f"faiss RQ Train_default, beam 1)")
    t = time.perf_counter()
    m = fit(x, (K, K, K), method="rvq", metric="l2", progress=False)
    dt = time.perf_counter() - t
    err_h = hermes_err(x, m)
    print(f"  hermes.fit rvq (l2)    {dt:8.2f} s   error {err_h:.5f}")
    print(f"  faiss RQ               {'':8} s   error {err_f:.5f}   (train s above)")
    print(f"  criterion rvq error <= faiss: {'PASS' if err_h <= err_f else 'FAIL'} "
          f"(ratio {err_h / err_f:.4f})")


def synthetic(n, d, noise, seed=0):
    from common import clustered_unit_vectors

    return clustered_unit_vectors(n, d, centers=1000, noise=noise, seed=seed)


def speed(args):
    n, d = args.n, args.d
    x = synthetic(n, d, args.noise)
    print(f"\n[3] synthetic {n} x {d} (bench/common.py clustered_unit_vectors: 1,000 unit centres + "
          f"noise {args.noise} / sqrt(d), normalized), 3 x 256, L2; {args.repeats} repeat(s), medians")
    res = {}
    for rep in range(args.repeats):
        t = time.perf_counter()
        m = fit(x, (256, 256, 256), method="rvq", metric="l2", progress=False)
        res.setdefault("rvq", []).append(time.perf_counter() - t)
        dt, err_f, _ = faiss_rq(x, 8, 3)
        res.setdefault("faiss", []).append(dt)
    err_h = hermes_err(x, m)
    t = time.perf_counter()
    for opt in (dict(kmeans_iters=10), dict(warmup_iters=0)):
        t = time.perf_counter()
        mo = fit(x, (256, 256, 256), method="rvq", metric="l2", progress=False, **opt)
        print(f"  hermes.fit rvq, {opt}: {time.perf_counter() - t:.2f} s, error {hermes_err(x, mo):.5f}")
    th, tf = float(np.median(res["rvq"])), float(np.median(res["faiss"]))
    print(f"  hermes.fit rvq (default: 5 iters, 256 points/centroid) {th:8.2f} s   error {err_h:.5f}")
    print(f"  faiss RQ train (10 iters, 256 points/centroid)         {tf:8.2f} s   error {err_f:.5f}")
    print(f"  ratio time {th / tf:.3f} (target <= 0.5), error {err_h / err_f:.4f} (target <= 1): "
          f"{'PASS' if th <= 0.5 * tf and err_h <= err_f else 'FAIL'}")

    if args.hermes_epochs:
        print(f"\n[4] method='hermes' on the same data, {args.hermes_epochs} epoch(s), batch 1024")
        t = time.perf_counter()
        m = fit(x, (256, 256, 256), method="hermes", epochs=args.hermes_epochs, progress=False)
        total = time.perf_counter() - t
        st = m.train_stats
        print(f"  total {total:.1f} s, k-means init {st['init_s']:.1f} s, fused={m.fused}")
        for e in st["epochs"]:
            parts = {k: e[f"{k}_s"] for k in ("data", "forward", "backward", "project", "ema")}
            tot = sum(parts.values())
            print(f"  epoch {e['epoch']}: {tot:.1f} s/epoch ({e['steps']} steps) = " +
                  ", ".join(f"{k} {v:.1f} s ({100 * v / tot:.0f}%)" for k, v in parts.items()) +
                  f"; loss {e['mean_loss']:.4f} (struct {e['mean_struct']:.4f}, quant {e['mean_quant']:.4f}, "
                  f"commit {e['mean_commit']:.4f})")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes (repo data, 20k x 256 synthetic)")
    ap.add_argument("--n", type=int, default=None, help="synthetic rows (default 200000; quick 20000)")
    ap.add_argument("--d", type=int, default=None, help="synthetic dim (default 1024; quick 256)")
    ap.add_argument("--epochs", type=int, default=10, help="hermes epochs on the real data")
    ap.add_argument("--hermes-epochs", type=int, default=1, help="hermes epochs timed on synthetic data")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--noise", type=float, default=0.5, help="synthetic noise scale (times 1/sqrt(d))")
    ap.add_argument("--real-n", type=int, default=None, help="use only the first rows of the real data")
    ap.add_argument("--skip-real", action="store_true")
    ap.add_argument("--shared", action="store_true", help=f"real data from {SHARED} (default: the repo's 20k)")
    ap.add_argument("--skip-speed", action="store_true")
    args = ap.parse_args()
    args.n = args.n or (20000 if args.quick else 200000)
    args.d = args.d or (256 if args.quick else 1024)
    import torch

    print(f"hermes {hermes.__version__}, torch {torch.__version__} ({torch.get_num_threads()} threads), "
          f"{os.cpu_count()} cpus")
    if not args.skip_real:
        real_data(args)
    if not args.skip_speed:
        speed(args)


if __name__ == "__main__":
    main()
