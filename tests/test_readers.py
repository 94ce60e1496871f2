"""hermes.readers: every shard format yields its rows exactly, in order, in batches of at most batch_size."""
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from hermes import readers as R


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
