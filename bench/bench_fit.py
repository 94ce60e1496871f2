"""bench_fit: hermes.fit (methods "hermes", "plain_rvq", "residual_kmeans") against scikit-learn KMeans / MiniBatchKMeans and
faiss ResidualQuantizer -- bucket quality at L1 on real embeddings, reconstruction error, and fit speed.

    python bench/bench_fit.py --quick          # small: repo data, 20k x 256 synthetic
    python bench/bench_fit.py                  # full: repo data (20k x 384), 200k x 1024 synthetic
    python bench/bench_fit.py --shared         # sections 1-2 on the 50k shared rows instead (if present)

Sections:
1. The paper's L1 table on a held-out split of the real data (fit on 80%, score the other 20%), L1 = 256,
   cosine assignment: rows KMeans, MiniBatchKMeans, BisectingKMeans (scikit-learn, on unit vectors),
   HERMES (method="hermes"), plain RVQ (method="plain_rvq"), residual k-means (method="residual_kmeans");
   columns exp(H), mean cos to own centroid, Recall@10 (hermes.metrics) and fit seconds; the paper's
   numbers (221k validation shard) beside them. --ema-decays 0.8 0.99 adds hermes at those EMA decays.
2. Real data, 3-stage reconstruction error: residual_kmeans with metric="l2" (faiss RQ is an L2 quantizer) vs faiss
   ResidualQuantizer (Train_default, max_beam_size = 1).
3. Synthetic clustered vectors: residual_kmeans (l2) fit time vs faiss RQ train time, reconstruction errors.
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


# The paper's L1 table (../shared/PAPER.md, "How it is judged"): a 221k-embedding validation shard, L1 = 256,
# cosine assignment. Columns: exp(H), mean cos to own centroid, Recall@10 (the paper gives no fit times).
PAPER_L1 = {
    "KMeans": (240.98, 0.8740, 0.356),
    "MiniBatchKMeans": (238.55, 0.8731, 0.345),
    "BisectingKMeans": (247.13, 0.8709, 0.285),
    "HERMES": (240.46, 0.8739, 0.355),
    "plain RVQ": (235.99, 0.8719, 0.348),
    "residual k-means": None,  # not a row of the paper: the initialization of the two above
}
#: hermes.fit method -> the paper's row it reproduces
METHOD_ROWS = {"hermes": "HERMES", "plain_rvq": "plain RVQ", "residual_kmeans": "residual k-means"}


def l1_table(x, K=256, epochs=10, seed=0, test_frac=0.2):
    """The paper's L1 table on a held-out split: fit on 80% of x, score the other 20%. Returns the rows."""
    from sklearn.cluster import BisectingKMeans, KMeans, MiniBatchKMeans

    from hermes.metrics import recall_at_k

    perm = np.random.default_rng(seed).permutation(x.shape[0])
    n_te = int(round(test_frac * x.shape[0]))
    tr, te = x[np.sort(perm[n_te:])], x[np.sort(perm[:n_te])]
    un = lambda a: a / np.linalg.norm(a, axis=1, keepdims=True)  # noqa: E731 (sklearn on unit vectors: cosine)
    fits = {
        "KMeans": lambda: KMeans(K, n_init=1, random_state=seed).fit(un(tr)),
        "MiniBatchKMeans": lambda: MiniBatchKMeans(K, n_init=1, random_state=seed, batch_size=4096).fit(un(tr)),
        "BisectingKMeans": lambda: BisectingKMeans(K, random_state=seed).fit(un(tr)),
    }
    rows = []
    for name, f in fits.items():
        t = time.perf_counter()
        est = f()
        dt = time.perf_counter() - t
        rows.append((name, dt, est.predict(un(te))))
    for method, name in METHOD_ROWS.items():
        kw = dict(epochs=epochs) if method != "residual_kmeans" else {}
        t = time.perf_counter()
        m = fit(tr, (K, K, K), method=method, metric="cos", progress=False, seed=seed, **kw)
        dt = time.perf_counter() - t
        rows.append((name, dt, hermes.assign_codes(te, m)[:, 0]))
    out = []
    for name, dt, ids in rows:
        ids = np.asarray(ids, np.int64)
        out.append((name, dt, effective_buckets(ids), centroid_cosine(te, ids), recall_at_k(te, ids, k=10)))
    return tr.shape[0], te.shape[0], out


def print_l1_table(n_tr, n_te, rows):
    print(f"  fit on {n_tr:,} rows, scored on the {n_te:,} held-out rows; paper: 221k validation shard")
    print(f"  {'method':<18} {'exp(H)':>8} {'cos->c':>7} {'R@10':>6} {'fit s':>8}   |  paper: {'exp(H)':>7} "
          f"{'cos->c':>7} {'R@10':>6}")
    for name, dt, eb, cc, rc in rows:
        p = PAPER_L1.get(name)
        ps = f"{p[0]:7.2f} {p[1]:7.4f} {p[2]:6.3f}" if p else f"{'-':>7} {'-':>7} {'-':>6}"
        print(f"  {name:<18} {eb:8.2f} {cc:7.4f} {rc:6.3f} {dt:8.2f}   |         {ps}")


def real_data(args):
    path = SHARED if (args.shared and SHARED.is_file()) else REPO
    x = np.load(path).astype(np.float32)
    if args.real_n:
        x = x[:args.real_n]
    n, d = x.shape
    K = 256
    print(f"\n[1] the paper's L1 table: real data {path.name} ({n} x {d}), L1 = {K} buckets, cosine "
          f"assignment, 80/20 held-out split, hermes epochs {args.epochs}")
    n_tr, n_te, rows = l1_table(x, K, args.epochs)
    print_l1_table(n_tr, n_te, rows)
    ref = {r[0]: r for r in rows}["KMeans"]
    for name in METHOD_ROWS.values():
        r = {r[0]: r for r in rows}[name]
        a, b = r[2] / ref[2] - 1, r[3] / ref[3] - 1
        print(f"  {name} vs KMeans: exp(H) {100 * a:+.2f}%, cos->c {100 * b:+.2f}%, "
              f"Recall@10 {100 * (r[4] / ref[4] - 1):+.2f}%")
    if args.ema_decays:
        x_tr = x
        print(f"\n[1b] method='hermes' EMA decay on the same split: " + ", ".join(map(str, args.ema_decays)))
        perm = np.random.default_rng(0).permutation(n)
        n_te = int(round(0.2 * n))
        tr, te = x_tr[np.sort(perm[n_te:])], x_tr[np.sort(perm[:n_te])]
        from hermes.metrics import recall_at_k
        for dec in args.ema_decays:
            t = time.perf_counter()
            m = fit(tr, (K, K, K), method="hermes", epochs=args.epochs, progress=False, ema_decay=dec)
            dt = time.perf_counter() - t
            c = hermes.assign_codes(te, m)
            ids = c[:, 0].astype(np.int64)
            resets = [e["dead_codes_reset"] for e in m.train_stats["epochs"]]
            print(f"  ema_decay {dec:<5} exp(H) {effective_buckets(ids):7.2f}  cos->c {centroid_cosine(te, ids):.4f}  "
                  f"R@10 {recall_at_k(te, ids, k=10):.3f}  held-out 3-stage error {hermes_err(te, m):.5f}  "
                  f"fit {dt:.1f} s  dead codes reset per epoch {resets[0]} ... {resets[-1]}")

    print(f"\n[2] real data, 3 x 256 reconstruction error ||h - decode||^2 (residual_kmeans with metric='l2'; "
          f"faiss RQ Train_default, beam 1)")
    try:
        tf, err_f, _ = faiss_rq(x, 8, 3)
    except ImportError:
        print("  faiss is not installed: section 2 skipped")
        return
    t = time.perf_counter()
    m = fit(x, (K, K, K), method="residual_kmeans", metric="l2", progress=False)
    dt = time.perf_counter() - t
    err_h = hermes_err(x, m)
    print(f"  hermes.fit residual_kmeans (l2)    {dt:8.2f} s   error {err_h:.5f}")
    print(f"  faiss RQ train                     {tf:8.2f} s   error {err_f:.5f}")
    print(f"  criterion residual_kmeans error <= faiss: {'PASS' if err_h <= err_f else 'FAIL'} "
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
        m = fit(x, (256, 256, 256), method="residual_kmeans", metric="l2", progress=False)
        res.setdefault("rvq", []).append(time.perf_counter() - t)
        dt, err_f, _ = faiss_rq(x, 8, 3)
        res.setdefault("faiss", []).append(dt)
    err_h = hermes_err(x, m)
    t = time.perf_counter()
    for opt in (dict(kmeans_iters=10), dict(warmup_iters=0)):
        t = time.perf_counter()
        mo = fit(x, (256, 256, 256), method="residual_kmeans", metric="l2", progress=False, **opt)
        print(f"  hermes.fit residual_kmeans, {opt}: {time.perf_counter() - t:.2f} s, error {hermes_err(x, mo):.5f}")
    th, tf = float(np.median(res["rvq"])), float(np.median(res["faiss"]))
    print(f"  hermes.fit residual_kmeans (default: 5 iters, 256 points/centroid) {th:8.2f} s   error {err_h:.5f}")
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
    ap.add_argument("--ema-decays", type=float, nargs="*", default=[],
                    help="also compare method='hermes' at these EMA decays on the held-out split (e.g. 0.8 0.99)")
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
