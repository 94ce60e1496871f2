"""Per-batch profile of hermes.assign_codes on the CPU: the GEMM against everything else (the epilogue).

One batch of --batch rows (default 16,384, assign_codes' CPU batch), d = 1024, 3 x 256 trained codebooks, orthogonal
W, each step timed alone (median of --repeats) through the same hermes._C operations assign_codes calls:

  fp32 path (auto on CPUs without native bf16):  norms_split | torch.mm fp32 | argmax_levels
  bf16 screen (auto with AVX512-BF16/AMX):       norms_split + bf16 split | torch.mm bf16 | screen_rescore

and the whole assign_codes call on the same batch; then the bf16 steps inside a loop over --loop-batches batches
(float32 and float16 rows, buffers reused as assign_codes reuses them), the epilogue's steady-state share. Prints
the CPU, its ISA flags and which path auto takes.

    python bench/bench_epilogue.py [--batch 16384] [--repeats 7]
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(__file__))
from bench_assign import _cpu_flags, _cpu_name, make_model  # noqa: E402
from common import clustered_unit_vectors, hermes_origin, print_table, timeit  # noqa: E402

import hermes  # noqa: E402
from hermes import assign as A  # noqa: E402
from hermes._backend import _C  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=A.CPU_BATCH)
    p.add_argument("--d", type=int, default=1024)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--loop-batches", type=int, default=6, help="batches in the steady-state loop")
    args = p.parse_args()
    B, d, levels, r = args.batch, args.d, (256, 256, 256), args.repeats
    nt = A._nthreads()
    flags = _cpu_flags()
    isa = [f for f in ("amx_bf16", "avx512_bf16", "avx512f", "avx2") if f in flags]
    print(f"# {hermes_origin()}")
    print(f"CPU: {_cpu_name()}; flags: {', '.join(isa)}; threads {nt}; hermes screen SIMD "
          f"{hermes.build_info()['cpu_screen_simd']}; auto takes the "
          f"{'bf16 screen' if A._cpu_has_fast_bf16() else 'fp32 path'}")
    xall = clustered_unit_vectors(max(B, 20000), d, seed=1)  # make_model trains on 20,000 rows
    model = make_model(d, levels, xall, metric="l2")
    x = np.ascontiguousarray(xall[:B])
    L = model.L
    codes = np.zeros((B, L), np.int32)
    inv, xn, dxn = (np.empty(B, np.float32) for _ in range(3))
    x16 = np.empty((B, d), np.int16)
    rescored = np.zeros(1, np.int64)
    xt = torch.from_numpy(x)

    tab32, _ = A._exec_tables(model, "cpu", False)
    M = torch.from_numpy(model._host_tables().M)
    g = torch.mm(xt, M)
    t_norms = timeit(lambda: _C.norms_split(x, tab32, inv, nthreads=nt), repeats=r)
    t_gemm = timeit(lambda: torch.mm(xt, M, out=g), repeats=r)
    t_argmax = timeit(lambda: _C.argmax_levels(g, x, tab32, inv, codes, nthreads=nt), repeats=r)
    t_fp32 = timeit(lambda: hermes.assign_codes(x, model, precision="fp32"), repeats=r)

    tab16, M16 = A._exec_tables(model, "cpu", True)
    g16 = torch.empty((B, tab16.cols), dtype=torch.bfloat16)
    x16t = torch.from_numpy(x16).view(torch.bfloat16)
    t_split = timeit(lambda: _C.norms_split(x, tab16, inv, x16, xn, dxn, nthreads=nt), repeats=r)
    t_gemm16 = timeit(lambda: torch.mm(x16t, M16, out=g16), repeats=r)

    def screen():
        rescored[0] = 0
        _C.screen_rescore(g16, x, tab16, inv, xn, dxn, codes, rescored, nthreads=nt)

    t_screen = timeit(screen, repeats=r)
    per = rescored[0] / (B * L)
    t_bf16 = timeit(lambda: hermes.assign_codes(x, model, precision="bf16"), repeats=r)
    ms = lambda t: f"{1e3 * t:.2f}"  # noqa: E731
    rows = [
        ["fp32", "norms_split", ms(t_norms), f"{t_norms / t_fp32:.1%}"],
        ["fp32", "torch.mm fp32 (the GEMM)", ms(t_gemm), f"{t_gemm / t_fp32:.1%}"],
        ["fp32", "argmax_levels (3 levels)", ms(t_argmax), f"{t_argmax / t_fp32:.1%}"],
        ["fp32", "assign_codes(precision='fp32'), whole batch", ms(t_fp32), "100%"],
        ["bf16", "norms_split + bf16 split", ms(t_split), f"{t_split / t_bf16:.1%}"],
        ["bf16", "torch.mm bf16 (the GEMM)", ms(t_gemm16), f"{t_gemm16 / t_bf16:.1%}"],
        ["bf16", f"screen_rescore ({per:.3f} rescored per row and level)", ms(t_screen), f"{t_screen / t_bf16:.1%}"],
        ["bf16", "assign_codes(precision='bf16'), whole batch", ms(t_bf16), "100%"],
    ]
    print(f"one batch of {B:,} rows, d = {d}, 3 x 256:")
    print_table(rows, ["path", "step", "ms", "of the call"])
    print(f"epilogue (all but the GEMM): fp32 path {ms(t_fp32 - t_gemm)} ms ({1 - t_gemm / t_fp32:.1%}), "
          f"bf16 screen {ms(t_bf16 - t_gemm16)} ms ({1 - t_gemm16 / t_bf16:.1%})")
    print("(one batch per call: the whole call also pays its fresh buffers' page faults, which a longer input "
          "pays once)")

    # Steady state: --loop-batches consecutive batches through the same calls and reused buffers, as
    # assign_codes runs an input of many batches, each step timed inside the loop (caches as they really are).
    nb = args.loop_batches
    xs = clustered_unit_vectors(nb * B, d, seed=2)
    for name, xin in (("float32", xs), ("float16", xs.astype(np.float16))):
        steps = np.zeros(3)
        walls = []
        for _ in range(r):
            t0 = time.perf_counter()
            for b in range(nb):
                xb = xin[b * B:(b + 1) * B]
                t1 = time.perf_counter()
                _C.norms_split(xb, tab16, inv, x16, xn, dxn, nthreads=nt)
                t2 = time.perf_counter()
                torch.mm(x16t, M16, out=g16)
                t3 = time.perf_counter()
                _C.screen_rescore(g16, xb, tab16, inv, xn, dxn, codes, rescored, nthreads=nt)
                steps += (t2 - t1, t3 - t2, time.perf_counter() - t3)
            walls.append(time.perf_counter() - t0)
        steps /= r
        tot = steps.sum()
        print(f"steady state, {nb} batches of {B:,} {name} rows ({nb * B / np.median(walls):,.0f} rows/s): "
              f"norms + split {ms(steps[0] / nb)} ms/batch ({steps[0] / tot:.1%}), bf16 GEMM {ms(steps[1] / nb)} "
              f"({steps[1] / tot:.1%}), screen + rescoring {ms(steps[2] / nb)} ({steps[2] / tot:.1%}): epilogue "
              f"{(steps[0] + steps[2]) / tot:.1%} of the batch")


if __name__ == "__main__":
    main()
