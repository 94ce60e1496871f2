"""hermes.readers: every shard format yields its rows exactly, in order, in batches of at most batch_size."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from hermes import readers as R

from conftest import child_env


def write(tmp_path, kind, x):
    if kind == "npy":
        p = tmp_path / "s.npy"
        np.save(p, x)
    elif kind == "safetensors":
        from safetensors.numpy import save_file

        p = tmp_path / "s.safetensors"
        save_file({"emb": x}, str(p))
    else:
        vt = pa.from_numpy_dtype(x.dtype)
        flat = pa.array(x.reshape(-1), type=vt)
        if kind == "parquet-fixed":
            arr = pa.FixedSizeListArray.from_arrays(flat, x.shape[1])
        else:
            offsets = pa.array(np.arange(0, x.size + 1, x.shape[1], dtype=np.int32))
            arr = pa.ListArray.from_arrays(offsets, flat)
        p = tmp_path / "s.parquet"
        pq.write_table(pa.table({"embedding": arr}), p, row_group_size=70)
    return Path(p)


@pytest.mark.parametrize("kind", ["npy", "safetensors", "parquet-list", "parquet-fixed"])
@pytest.mark.parametrize("dtype", [np.float16, np.float32])
@pytest.mark.parametrize("n,batch", [(0, 8), (1, 8), (257, 32), (257, 1000)])
def test_batches_reproduce_the_shard(tmp_path, kind, dtype, n, batch):
    x = np.random.default_rng(0).standard_normal((n, 13)).astype(dtype)
    p = write(tmp_path, kind, x)
    with R.open_shard(p) as s:
        assert (s.n, s.d, s.dtype, s.name, s.stem) == (n, 13 if n or kind != "parquet-list" else 0,
                                                       np.dtype(dtype).name, p.name, "s")
        assert s.source == str(p.resolve()) and s.kind == kind.split("-")[0]
        got, row = [], 0
        for lo, b in s.batches(batch):
            assert lo == row and 0 < b.shape[0] <= batch
            got.append(np.array(b))
            row += b.shape[0]
        assert row == n
        if n:
            np.testing.assert_array_equal(np.concatenate(got), x)


def test_open_shard_errors(tmp_path):
    p = tmp_path / "x.csv"
    p.write_text("1,2\n")
    with pytest.raises(ValueError, match=r"open_shard: .*x.csv has an unsupported extension '.csv'"):
        R.open_shard(p)
    with pytest.raises(FileNotFoundError, match=r"my_fn: no such file: .*nope.npy"):
        R.open_shard(tmp_path / "nope.npy", fn="my_fn")
    assert set(R.READERS) == set(R.SUFFIXES)


def test_npy_fortran_order(tmp_path):
    x = np.asfortranarray(np.random.default_rng(1).standard_normal((300, 7)).astype(np.float32))
    np.save(tmp_path / "f.npy", x)
    with R.open_shard(tmp_path / "f.npy") as s:
        got = np.concatenate([np.array(b) for _, b in s.batches(64)])
    np.testing.assert_array_equal(got, x)


@pytest.mark.skipif(sys.platform != "linux", reason="reads the child's peak RSS from /proc/self/status")
def test_label_peak_rss_stays_bounded_on_a_shard_larger_than_the_bound(tmp_path):
    """`hermes label` on a 1.64 GB float16 .npy shard peaks under 1.5 GB of resident memory: the pages behind
    the cursor are released (a mapping left resident peaks above the shard's size)."""
    import hermes

    n, d, bound = 800_000, 1024, 1.5e9
    block = np.random.default_rng(0).standard_normal((16384, d)).astype(np.float16)
    p = tmp_path / "big.npy"
    with open(p, "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": block.dtype.str, "fortran_order": False, "shape": (n, d)})
        for lo in range(0, n, len(block)):
            block[:n - lo].tofile(f)
    assert p.stat().st_size > bound
    rng = np.random.default_rng(1)
    model = hermes.Model([rng.standard_normal((4, d)).astype(np.float32) for _ in range(2)], metric="cos")
    model.save(tmp_path / "m.safetensors")
    # The child reports its own high-water mark (VmHWM): ru_maxrss from wait4 / RUSAGE_CHILDREN also counts the
    # RSS the parent (this pytest) had when it forked the child.
    code = ("import atexit, sys\n"
            "atexit.register(lambda: open('peak', 'w').write(next(l for l in open('/proc/self/status')\n"
            "                                                     if l.startswith('VmHWM')).split()[1]))\n"
            "from hermes.cli import main\n"
            "main(['label', '--model', 'm.safetensors', '--out', 'out', 'big.npy', '--no-progress'])\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=child_env(), capture_output=True, text=True,
                       timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "800,000 rows" in r.stdout
    peak = int((tmp_path / "peak").read_text()) * 1024
    assert peak < bound, f"peak RSS {peak / 1e9:.2f} GB"
    t = pq.read_table(tmp_path / "out" / "big.parquet", columns=["row", "c1", "c2"])
    want = hermes.assign_codes(block[:1000], model)
    np.testing.assert_array_equal(np.stack([t.column("c1").to_numpy()[:1000], t.column("c2").to_numpy()[:1000]], 1),
                                  want)


@pytest.mark.parametrize("row_group_size", [40, 1000])  # several small row groups (decoded in parallel), one
def test_parquet_paths_name_the_bad_row_and_stop_cleanly(tmp_path, row_group_size):
    x = np.random.default_rng(2).standard_normal((300, 6)).astype(np.float32)
    rows = list(x)
    rows[213] = rows[213][:4]
    p = tmp_path / "r.parquet"
    pq.write_table(pa.table({"embedding": pa.array(rows, pa.list_(pa.float32()))}), p, row_group_size=row_group_size)
    s = R.open_shard(p)
    with pytest.raises(ValueError, match=r"open_shard: .*r\.parquet, column 'embedding': row 213 has 4 values"):
        for _ in s.batches(32):
            pass
    good = write(tmp_path, "parquet-list", x)
    with R.open_shard(good) as s:
        it = s.batches(16)
        lo, b = next(it)  # a consumer that stops early: the read-ahead threads are joined, nothing hangs
        it.close()
        np.testing.assert_array_equal(b, x[:16])
        assert [lo for lo, _ in s.batches(128)] == list(range(0, 300, 70))  # batches stop at row groups


def test_read_embeddings_of_one_npy_is_a_memmap(tmp_path):
    """fit streams a numpy.memmap batch by batch (it loads any other array whole)."""
    x = np.random.default_rng(4).standard_normal((50, 8)).astype(np.float16)
    np.save(tmp_path / "a.npy", x)
    got = R.read_embeddings(tmp_path / "a.npy")
    assert isinstance(got, np.memmap) and np.array_equal(got, x)


def _fit_shards(tmp_path):
    """A directory of 3 shards (101 x 7 in all): .npy float32, .safetensors bf16 beside a 1-d tensor, parquet."""
    import torch
    from safetensors.torch import save_file

    rng = np.random.default_rng(7)
    x = rng.standard_normal((101, 7)).astype(np.float32)
    x[40:70] = torch.from_numpy(x[40:70]).bfloat16().float().numpy()  # exact in bf16
    d = tmp_path / "emb"
    d.mkdir()
    np.save(d / "a.npy", x[:40])
    save_file({"ids": torch.arange(30), "emb": torch.from_numpy(x[40:70]).bfloat16()}, str(d / "b.safetensors"))
    pq.write_table(pa.table({"embedding": pa.FixedSizeListArray.from_arrays(pa.array(x[70:].ravel()), 7)}),
                   d / "c.parquet", row_group_size=8)
    return d, x


@pytest.mark.parametrize("sample", [None, 60])
def test_shard_array_reads_the_rows_asked_for(tmp_path, sample):
    d, x = _fit_shards(tmp_path)
    (d / "c.parquet").unlink()
    x = x[:70]
    keep = None if sample is None else R.sample_rows(70, sample, 3)
    a = R.open_fit_input(d, sample=sample, seed=3, rank=1, world=2)
    want = x if keep is None else x[keep]
    assert isinstance(a, R.ShardArray) and a.shape == want.shape and a.dtype == np.float32
    np.testing.assert_array_equal(a[:], want)
    assert a.rows_read == len(want)
    for key in [slice(35, 45), slice(None, None, 7), 39, -1, np.array([44, 3, 39, 40, 3]), np.arange(0)]:
        np.testing.assert_array_equal(a[key], want[key])
    n = a.rows_read
    a[np.array([5, 50])]
    assert a.rows_read == n + 2  # only the rows asked for
    np.testing.assert_array_equal(R.read_embeddings(d, sample=sample, seed=3), want)
    with pytest.raises(IndexError, match="out of range"):
        a[np.array([len(want)])]


@pytest.mark.parametrize("world", [1, 2, 3, 5])
@pytest.mark.parametrize("sample", [None, 77])
def test_row_partitions_cover_the_input_once(tmp_path, world, sample):
    """A parquet shard among the inputs: rank r reads rows [r N / world, (r + 1) N / world) (of the sample), and
    only the parquet row groups (8 rows) that cover them."""
    d, x = _fit_shards(tmp_path)
    want = R.read_embeddings(d, sample=sample, seed=3)
    parts = [R.open_fit_input(d, sample=sample, seed=3, rank=r, world=world) for r in range(world)]
    assert all(isinstance(p, R.RowPartition) and p.shape == want.shape for p in parts)
    assert [p.lo for p in parts] == [r * len(want) // world for r in range(world)]
    np.testing.assert_array_equal(np.concatenate([p.data for p in parts]), want)
    if sample is None:
        for p in parts:  # the memory-mapped rows exactly, and whole 8-row groups of c.parquet's rows [70, 101)
            lo, hi = max(p.lo, 70) - 70, max(p.hi, 70) - 70
            groups = (min(31, -(-hi // 8) * 8) - lo // 8 * 8) if hi > lo else 0
            assert p.rows_read == min(p.hi, 70) - min(p.lo, 70) + groups, (p, p.rows_read)
    with pytest.raises(ValueError, match="rank must be an integer in"):
        R.open_fit_input(d, rank=world, world=world)
