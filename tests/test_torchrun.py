"""`torchrun --nproc-per-node 2 -m hermes fit ...`: hermes initializes the process group itself (gloo on CPU),
only rank 0 writes the model, and the result matches a single-process fit over the same global minibatches.

Tolerance (documented in the README): the two ranks split each global minibatch of 2 x 32 rows; gradients are
averaged and the EMA codebook statistics summed across ranks, so those parts equal one process with 64-row
minibatches up to float32 summation order. The structure-preserving pair loss pairs rows within each rank's half
and dead codes are reset from rank 0's residuals, so the models are not bit-identical: the test requires the
two models to give the same level-1 code to >= 90 % of the rows and a mean quantization error within 5 %.
"""
import socket
import subprocess
import sys

import numpy as np
import pytest

import hermes
from hermes.train import fit

from conftest import child_env

dist = pytest.importorskip("torch.distributed", reason="torch.distributed is not available in this torch build")


def _blobs(n=600, d=12, k=10, seed=0):
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((k, d)) * 3
    return (c[rng.integers(0, k, n)] + 0.4 * rng.standard_normal((n, d))).astype(np.float32)


def test_torchrun_two_gloo_ranks_match_single_process(tmp_path):
    if not dist.is_available():
        pytest.skip("torch.distributed is not available in this torch build")
    x = _blobs()
    np.save(tmp_path / "x.npy", x)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    args = ["fit", str(tmp_path / "x.npy"), "--out", str(tmp_path / "ddp.safetensors"), "--levels", "8,4",
            "--epochs", "3", "--batch-size", "32", "--seed", "4", "--device", "cpu", "--no-progress",
            "--checkpoint-dir", str(tmp_path / "ckpt")]
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr",
                        "127.0.0.1", "--master-port", str(port), "-m", "hermes", *args],
                       env=child_env(), cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    assert r.stdout.count("fitted hermes on 600 x 12") == 1, r.stdout  # rank 0 alone reports and writes
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("ddp")) == ["ddp.safetensors"]
    ddp = hermes.load(tmp_path / "ddp.safetensors")
    one = fit(x, (8, 4), method="hermes", epochs=3, batch_size=64, seed=4, progress=False)
    same_l1 = float((hermes.assign_codes(x, ddp)[:, 0] == hermes.assign_codes(x, one)[:, 0]).mean())
    e_ddp = float(hermes.quantization_error(x, ddp).mean())
    e_one = float(hermes.quantization_error(x, one).mean())
    print(f"level-1 codes equal on {same_l1:.3f} of rows; error ddp {e_ddp:.5f}, single {e_one:.5f}")
    assert same_l1 >= 0.99, same_l1
    assert abs(e_ddp - e_one) <= 0.01 * e_one, (e_ddp, e_one)
