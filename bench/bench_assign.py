"""Microbenchmark of hermes.assign_codes against faiss and a torch naive implementation.

Synthetic clustered unit vectors, d = 1024, 3 x 256 codebooks, orthogonal W. Prints vectors/s for each
method, the machine's sgemm GFLOP/s measured in the same run, hermes's share of the folded roofline
(d * sum(K) * 2 flops per vector), and the ratios the targets are stated in. Correctness is checked first.

    python bench/bench_assign.py                   # CPU, N = 100,000
    python bench/bench_assign.py --device cuda     # hermes CUDA vs torch CUDA (N = 1M and 10M, fp32/fp16/bf16 input)
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(__file__))
from common import clustered_unit_vectors, hermes_origin, print_table, timeit  # noqa: E402

import hermes  # noqa: E402
import hermes.reference  # noqa: E402


def make_model(d, levels, x, seed=0, metric="l2", codebooks="trained"):
    """A random orthogonal W and codebooks built on 20,000 rotated rows of x.

    codebooks="trained" (default): per stage, faiss k-means (10 iterations) on the residuals, as a trained RVQ
    has. codebooks="sampled": sampled residual rows as codewords. That construction is degenerate: the
    sampled rows that were themselves level-1 codewords have zero residuals, so every deeper level holds
    several identical zero codewords, which win most rows with exact ties.
    """
    rng = np.random.default_rng(seed)
    W = np.linalg.qr(rng.standard_normal((d, d)))[0].astype(np.float32)
    h = np.ascontiguousarray(x[rng.choice(len(x), 20000, replace=False)] @ W.T)
    cbs, r = [], h.copy()
    for l, K in enumerate(levels):
        if codebooks == "trained":
            import faiss

            km = faiss.Kmeans(d, K, niter=10, seed=seed + l, verbose=False)
            km.train(r)
            C = km.centroids.copy()
        else:
            C = r[rng.choice(len(r), K, replace=False)].copy()
        cbs.append(C)
        idx = np.argmax(2 * r @ C.T - (C * C).sum(1), axis=1)
        r = r - C[idx]
    return hermes.Model(cbs, W=W, b=None, metric=metric, normalize=True)


def torch_naive(x, W, b, cbs, metric):
    """Rotation, normalization, then per stage matmul + argmax + subtraction (what a user would write)."""
    h = torch.nn.functional.normalize(torch.addmm(b, x, W.T), dim=1)
    codes = []
    for C in cbs:
        s = h @ C.T
        s = 2 * s - (C * C).sum(1) if metric == "l2" else s / C.norm(dim=1)
        c = s.argmax(1)
        codes.append(c)
        h = h - C[c]
    return torch.stack(codes, 1)


def sgemm_gflops(device="cpu", n=8192, d=1024, k=768, dtype=torch.float32):
    a = torch.randn(n, d, device=device).to(dtype)
    b = torch.randn(d, k, device=device).to(dtype)
    sync = torch.cuda.synchronize if device == "cuda" else None
    t = timeit(lambda: torch.mm(a, b), repeats=5, warmup=2, sync=sync)
    return 2.0 * n * d * k / t / 1e9


def bench_cpu(args):
    import faiss

    d, levels, N = args.d, (256, 256, 256), args.n
    print(f"# CPU: N={N:,} d={d} levels={levels} codebooks={args.codebooks}; torch threads={torch.get_num_threads()}, "
          f"faiss threads={faiss.omp_get_max_threads()}")
    x = clustered_unit_vectors(N, d, seed=1)
    model = make_model(d, levels, x, metric="l2", codebooks=args.codebooks)
    Wt, bt = torch.from_numpy(model.W), torch.zeros(d)
    cbs_t = [torch.from_numpy(c) for c in model.codebooks]

    # faiss peers use the same codebooks, on x without the rotation (their job is strictly smaller).
    rq = faiss.ResidualQuantizer(d, len(levels), 8)
    rq.max_beam_size = 1
    faiss.copy_array_to_vector(np.concatenate(model.codebooks).ravel(), rq.codebooks)
    rq.is_trained = True
    flats = []
    for C in model.codebooks:
        ix = faiss.IndexFlatL2(d)
        ix.add(C)
        flats.append(ix)

    def faiss_flat(xx):
        r = xx.copy()
        out = np.empty((len(xx), len(flats)), dtype=np.int64)
        for l, ix in enumerate(flats):
            _, I = ix.search(r, 1)
            out[:, l] = I[:, 0]
            r -= model.codebooks[l][I[:, 0]]
        return out

    # Correctness first: hermes vs the float64 reference; faiss on the rotated input must agree too.
    n_chk = 2000
    ref = hermes.reference.assign(x[:n_chk], model.codebooks, model.W, None, "l2", True)
    got = hermes.assign_codes(x[:n_chk], model)
    got32 = hermes.assign_codes(x[:n_chk], model, precision="fp32")
    hx = np.ascontiguousarray(x[:n_chk] @ model.W.T)
    fz = rq.compute_codes(hx)
    f_codes = np.stack([np.frombuffer(fz.tobytes(), np.uint8).reshape(n_chk, -1)[:, l] for l in range(3)], 1)
    tn = torch_naive(torch.from_numpy(x[:n_chk]), Wt, bt, cbs_t, "l2").numpy()
    print(f"agreement with float64 reference on {n_chk} rows: hermes {np.mean((got == ref).all(1)):.4f} "
          f"(fp32 {np.mean((got32 == ref).all(1)):.4f}), "
          f"faiss RQ (rotated input) {np.mean((f_codes == ref).all(1)):.4f}, torch naive {np.mean((tn == ref).all(1)):.4f}")

    gf = sgemm_gflops()
    roof = gf * 1e9 / (2.0 * d * sum(levels))
    r = args.repeats
    screen = hermes.assign._cpu_has_fast_bf16()
    t_h = timeit(lambda: hermes.assign_codes(x, model), repeats=r)
    t_h32 = timeit(lambda: hermes.assign_codes(x, model, precision="fp32"), repeats=r)
    model_cos = hermes.Model(model.codebooks, W=model.W, metric="cos")
    t_hc = timeit(lambda: hermes.assign_codes(x, model_cos), repeats=r)
    x16 = x.astype(np.float16)
    t_h16 = timeit(lambda: hermes.assign_codes(x16, model), repeats=r)
    t_rq = timeit(lambda: rq.compute_codes(x), repeats=r)
    t_fl = timeit(lambda: faiss_flat(x), repeats=r)
    xt = torch.from_numpy(x)
    t_tn = timeit(lambda: torch_naive(xt, Wt, bt, cbs_t, "l2"), repeats=r)
    v = lambda t: N / t  # noqa: E731
    auto = "bf16 screen + exact fp32 rescoring" if screen else "fp32 GEMM"
    native16 = bool({"avx512_bf16", "amx_bf16"} & _cpu_flags())
    gf16 = sgemm_gflops(n=8192 if native16 else 512, dtype=torch.bfloat16)  # emulated bf16 is ~100x slower
    roof16 = gf16 * 1e9 / (2.0 * d * sum(levels))
    info = hermes.build_info()
    isa = [f for f in ("amx_bf16", "avx512_bf16", "avx512f", "avx2") if f in _cpu_flags()]
    print(f"CPU: {_cpu_name()}; ISA flags: {', '.join(isa) or 'none of amx_bf16/avx512_bf16/avx512f/avx2'}; "
          f"hermes screen SIMD: {info['cpu_screen_simd']}; auto runs: {auto}; threads: {info['cpu_threads']}")
    share = lambda t: f"{v(t) / roof:.1%}"  # noqa: E731
    # Without native bf16 (AVX512-BF16/AMX) torch emulates the bf16 GEMM far below sgemm: no roofline to speak of.
    share16 = (lambda t: f"{v(t) / roof16:.1%}") if native16 else (lambda t: "n/a")  # noqa: E731
    rows = [
        [f"hermes assign_codes (l2, with rotation; auto = {auto})", f"{v(t_h):,.0f}", share(t_h), share16(t_h)],
        ["hermes assign_codes (l2, with rotation; precision='fp32')", f"{v(t_h32):,.0f}", share(t_h32), share16(t_h32)],
        ["hermes assign_codes (cos, with rotation)", f"{v(t_hc):,.0f}", share(t_hc), share16(t_hc)],
        ["hermes assign_codes (float16 input)", f"{v(t_h16):,.0f}", share(t_h16), share16(t_h16)],
        ["faiss ResidualQuantizer.compute_codes (beam 1, no rotation)", f"{v(t_rq):,.0f}", share(t_rq), share16(t_rq)],
        ["faiss IndexFlatL2 x 3 stages (no rotation)", f"{v(t_fl):,.0f}", share(t_fl), share16(t_fl)],
        ["torch naive (rotation + 3 x matmul/argmax)", f"{v(t_tn):,.0f}", share(t_tn), share16(t_tn)],
    ]
    print(f"sgemm: {gf:,.0f} GFLOP/s -> folded fp32 roofline {roof:,.0f} vectors/s ({2 * d * sum(levels) / 1e6:.2f} "
          f"MFLOP/vector); bf16 GEMM: {gf16:,.0f} GFLOP/s -> bf16 roofline {roof16:,.0f} vectors/s")
    print_table(rows, ["method", "vectors/s", "of fp32 roofline", "of bf16 roofline"])
    print()
    print_table([
        ["hermes / faiss compute_codes", f"{t_rq / t_h:.2f}x", ">= 6x (issue 15; 4x before)"],
        # what a screen costing nothing but its GEMM would reach here: the ceiling of any bf16-GEMM-bound assigner
        ["bf16 GEMM roofline / faiss compute_codes (ceiling)", f"{roof16 / v(t_rq):.2f}x" if native16 else "n/a", ""],
        ["hermes / faiss IndexFlatL2 stages", f"{t_fl / t_h:.2f}x", ""],
        ["hermes / torch naive", f"{t_tn / t_h:.2f}x", ">= 2.5x"],
        ["hermes share of folded fp32 roofline", f"{v(t_h) / roof:.1%}", ">= 60%"],
        ["hermes share of bf16 GEMM roofline", share16(t_h) + ("" if native16 else " (no native bf16)"),
         ">= 50% with AMX"],
        ["hermes fp32 / faiss compute_codes", f"{t_rq / t_h32:.2f}x", ""],
        ["hermes fp32 share of folded roofline", f"{v(t_h32) / roof:.1%}", ""],
    ], ["ratio", "measured", "target"])


def _cpu_flags() -> set:
    try:
        with open("/proc/cpuinfo") as f:
            return set(next((line for line in f if line.startswith("flags")), "").split())
    except OSError:
        return set()


def _cpu_name() -> str:
    import platform

    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def bench_cuda(args):
    """hermes CUDA (auto = the tensor-core screen; fp32 = the SIMT kernels) against torch CUDA naive (fp32 with TF32
    off and on, and bf16), at each N in --cuda-n, for fp32, fp16 and bf16 inputs, with the cuBLAS bf16 GEMM rate
    measured in the same run as the roofline (d * sum(K) * 2 flops per vector)."""
    dev = "cuda"
    d, levels = args.d, (256, 256, 256)
    cols = sum(levels)
    print(f"# CUDA: {torch.cuda.get_device_name()} d={d} levels={levels}; torch {torch.__version__}")
    xs = torch.from_numpy(clustered_unit_vectors(50000, d, seed=1))
    model = make_model(d, levels, xs.numpy(), metric="l2", codebooks=args.codebooks)
    Wt = torch.from_numpy(model.W).to(dev)
    bt = torch.zeros(d, device=dev)
    cbs_t = [torch.from_numpy(c).to(dev) for c in model.codebooks]
    # Correctness first: the screen against the float64 reference and the CPU executor, and the fp32 kernels.
    xc = xs[:4096].to(dev)
    ref = hermes.reference.assign(xs[:4096].numpy(), model.codebooks, model.W, None, "l2", True)
    cpu = hermes.assign_codes(xs[:4096].numpy(), model, precision="fp32")
    for precision in ("auto", "fp32"):
        got = hermes.assign_codes(xc, model, precision=precision).cpu().numpy()
        print(f"agreement on 4096 rows, precision={precision}: CUDA vs float64 reference "
              f"{np.mean((got == ref).all(1)):.4f}, CUDA vs CPU fp32 {np.mean((got == cpu).all(1)):.4f}")
    sync = torch.cuda.synchronize
    torch.backends.cuda.matmul.allow_tf32 = False
    gf = sgemm_gflops(dev)
    torch.backends.cuda.matmul.allow_tf32 = True
    gf_tf32 = sgemm_gflops(dev)
    torch.backends.cuda.matmul.allow_tf32 = False
    old = torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction
    torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction = False  # as the screen runs it
    gf_bf16 = sgemm_gflops(dev, n=1 << 16, d=d, k=cols, dtype=torch.bfloat16)
    torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction = old
    per_vec = 2.0 * d * cols
    roof, roof16 = gf * 1e9 / per_vec, gf_bf16 * 1e9 / per_vec
    print(f"cuBLAS sgemm {gf:,.0f} GFLOP/s (TF32: {gf_tf32:,.0f}) -> fp32 roofline {roof:,.0f} vectors/s; "
          f"cuBLAS bf16 GEMM {gf_bf16:,.0f} GFLOP/s -> bf16 roofline {roof16:,.0f} vectors/s")
    cbs16 = [c.bfloat16() for c in cbs_t]
    rows = []
    for N in args.cuda_n:
        g = torch.Generator(device=dev).manual_seed(0)
        x = torch.nn.functional.normalize(torch.randn(N, d, device=dev, generator=g), dim=1)
        for dtype in (torch.float32, torch.float16, torch.bfloat16):
            xx = x.to(dtype)
            t_auto = timeit(lambda: hermes.assign_codes(xx, model, check_finite=False), repeats=args.repeats, sync=sync)
            t_fp32 = timeit(lambda: hermes.assign_codes(xx, model, precision="fp32", check_finite=False),
                            repeats=args.repeats, sync=sync)
            chunk = 1 << 20
            naive = []
            for tf32 in (False, True):
                torch.backends.cuda.matmul.allow_tf32 = tf32
                fn = lambda: [torch_naive(xx[i:i + chunk].float(), Wt, bt, cbs_t, "l2") for i in range(0, N, chunk)]  # noqa: E731
                naive.append(timeit(fn, repeats=args.repeats, sync=sync))
            torch.backends.cuda.matmul.allow_tf32 = False
            fn16 = lambda: [torch_naive(xx[i:i + chunk].bfloat16(), Wt.bfloat16(), bt.bfloat16(), cbs16, "l2")  # noqa: E731
                            for i in range(0, N, chunk)]
            t_n16 = timeit(fn16, repeats=args.repeats, sync=sync)
            v = lambda t: N / t  # noqa: E731
            rows.append([f"{N:,}", str(dtype).split(".")[1], f"{v(t_auto):,.0f}", f"{v(t_fp32):,.0f}",
                         f"{v(naive[0]):,.0f}", f"{v(naive[1]):,.0f}", f"{v(t_n16):,.0f}",
                         f"{naive[0] / t_auto:.2f}x", f"{naive[1] / t_auto:.2f}x", f"{t_n16 / t_auto:.2f}x",
                         f"{v(t_auto) / roof16:.1%}", f"{v(t_fp32) / roof:.1%}"])
            del xx
        del x
        torch.cuda.empty_cache()
    print_table(rows, ["N", "input", "hermes auto vec/s", "hermes fp32 vec/s", "torch naive fp32", "torch naive TF32",
                       "torch naive bf16", "auto vs naive fp32", "auto vs naive TF32", "auto vs naive bf16",
                       "auto of bf16 roofline", "fp32 of fp32 roofline"])
    print("targets (H100/H200, bf16 input): >= 150M vectors/s, >= 50% of the bf16 roofline, >= 3x torch naive")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--n", type=int, default=100_000, help="rows for the CPU benchmark")
    p.add_argument("--d", type=int, default=1024)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--codebooks", choices=["trained", "sampled"], default="trained",
                   help="trained: per-stage k-means (default); sampled: residual rows (degenerate, see make_model)")
    p.add_argument("--cuda-n", type=int, nargs="+", default=[1_000_000, 10_000_000])
    args = p.parse_args()
    print(f"{hermes_origin()}; build: cuda={hermes.build_info()['cuda']} "
          f"archs={hermes.build_info()['cuda_architectures']}")
    if args.device == "cuda":
        if not hermes.cuda_available():
            sys.exit(f"bench_assign.py --device cuda: no CUDA path here: {hermes.build_info()['cuda_unavailable_reason']}")
        bench_cuda(args)
    else:
        bench_cpu(args)


if __name__ == "__main__":
    main()
