"""hermes convert: shards of every format -> .npy files equal to the input, atomic, inputs never replaced."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import hermes

from conftest import child_env


def write_parquet(path, x, fixed, row_group_size=50):
    flat = pa.array(x.reshape(-1))
    arr = pa.FixedSizeListArray.from_arrays(flat, x.shape[1]) if fixed else \
        pa.ListArray.from_arrays(pa.array(np.arange(0, x.size + 1, x.shape[1], dtype=np.int32)), flat)
    pq.write_table(pa.table({"vec": arr}), path, row_group_size=row_group_size)
    return Path(path)


def test_convert_every_format(tmp_path):
    import torch
    from safetensors.torch import save_file

    rng = np.random.default_rng(0)
    x16 = rng.standard_normal((257, 33)).astype(np.float16)
    x32 = rng.standard_normal((100, 33)).astype(np.float32)
    src = tmp_path / "src"
    src.mkdir()
    write_parquet(src / "a.parquet", x16, fixed=True)
    write_parquet(src / "b.parquet", x32, fixed=False)
    bf = torch.from_numpy(x32).to(torch.bfloat16)
    save_file({"e": bf}, str(src / "c.safetensors"))
    np.save(src / "d.npy", x32)
    np.save(src / "e.npy", np.zeros((0, 33), np.float16))
    rep = hermes.convert(src, tmp_path / "out", column="vec", batch_size=64, progress=False)
    assert [p.name for p in rep.outputs] == ["a.npy", "b.npy", "c.npy", "d.npy", "e.npy"] and rep.rows == 557
    got = {p.stem: np.load(p) for p in rep.outputs}
    assert got["a"].dtype == np.float16 and np.array_equal(got["a"], x16)
    assert got["b"].dtype == np.float32 and np.array_equal(got["b"], x32)
    assert got["c"].dtype == np.float32 and np.array_equal(got["c"], bf.float().numpy())
    assert np.array_equal(got["d"], x32) and got["e"].shape == (0, 33)
    assert sorted(q.name for q in (tmp_path / "out").iterdir()) == [p.name for p in rep.outputs]  # no temp files
    # the converted shard labels to the same codes as the parquet one
    model = hermes.Model([rng.standard_normal((5, 33)).astype(np.float32) for _ in range(2)], metric="cos")
    la = hermes.label(src / "a.parquet", model, tmp_path / "la", column="vec", progress=False)
    lb = hermes.label(rep.outputs[0], model, tmp_path / "lb", progress=False)
    ca = pq.read_table(la.out_dir / "a.parquet", columns=["c1", "c2"])
    cb = pq.read_table(lb.out_dir / "a.parquet", columns=["c1", "c2"])
    assert ca.equals(cb)


def test_convert_dtype_and_overflow(tmp_path):
    x = np.random.default_rng(1).standard_normal((90, 8)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    rep = hermes.convert(tmp_path / "x.npy", tmp_path / "h", dtype="float16", progress=False)
    assert np.array_equal(np.load(rep.outputs[0]), x.astype(np.float16))
    x[71, 2] = 1e6
    np.save(tmp_path / "big.npy", x)
    with pytest.raises(ValueError, match=r"convert: .*big\.npy: row 71 has a value beyond the float16 range"):
        hermes.convert(tmp_path / "big.npy", tmp_path / "h2", dtype="float16", batch_size=32, progress=False)
    assert list((tmp_path / "h2").iterdir()) == []  # nothing half-written
    with pytest.raises(ValueError, match=r"convert: dtype must be one of float16, float32 or None, got 'int8'"):
        hermes.convert(tmp_path / "x.npy", tmp_path / "h3", dtype="int8")


def test_convert_never_replaces_an_input_or_a_foreign_file(tmp_path):
    x = np.random.default_rng(2).standard_normal((20, 4)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    with pytest.raises(ValueError, match=r"output .*x\.npy is also the input .*x\.npy; refusing to overwrite"):
        hermes.convert(tmp_path / "x.npy", tmp_path, overwrite=True, progress=False)
    write_parquet(tmp_path / "p.parquet", x, fixed=False)
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "p.npy").write_text("my notes")
    with pytest.raises(ValueError, match=r"output .*p\.npy exists and is not a file this command writes"):
        hermes.convert(tmp_path / "p.parquet", tmp_path / "o", column="vec", progress=False)
    with pytest.raises(ValueError, match=r"output .*p\.npy exists and is not a \.npy file; refusing to replace"):
        hermes.convert(tmp_path / "p.parquet", tmp_path / "o", column="vec", overwrite=True, progress=False)
    assert (tmp_path / "o" / "p.npy").read_text() == "my notes"
    hermes.convert(tmp_path / "p.parquet", tmp_path / "o2", column="vec", progress=False)
    np.save(tmp_path / "o2" / "p.npy", np.zeros((1, 4)))  # an existing .npy output is replaced on request only
    with pytest.raises(ValueError, match=r"p\.npy exists"):
        hermes.convert(tmp_path / "p.parquet", tmp_path / "o2", column="vec", progress=False)
    hermes.convert(tmp_path / "p.parquet", tmp_path / "o2", column="vec", overwrite=True, progress=False)
    assert np.array_equal(np.load(tmp_path / "o2" / "p.npy"), x)
    np.save(tmp_path / "p2.npy", x)
    (tmp_path / "d").mkdir()
    write_parquet(tmp_path / "d" / "p2.parquet", x, fixed=False)
    with pytest.raises(ValueError, match=r"would both write p2\.npy"):
        hermes.convert([tmp_path / "p2.npy", tmp_path / "d" / "p2.parquet"], tmp_path / "o3", column="vec")


def test_cli_convert(tmp_path):
    x = np.random.default_rng(3).standard_normal((40, 6)).astype(np.float16)
    write_parquet(tmp_path / "s.parquet", x, fixed=True)
    r = subprocess.run([sys.executable, "-m", "hermes", "convert", "s.parquet", "--column", "vec", "--out", "npy",
                        "--no-progress"], cwd=tmp_path, env=child_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("converted 1 shard(s) (40 rows, ") and r.stdout.rstrip().endswith("-> npy")
    assert np.array_equal(np.load(tmp_path / "npy" / "s.npy"), x)
    r = subprocess.run([sys.executable, "-m", "hermes", "convert", "s.parquet", "--out", "npy2"], cwd=tmp_path,
                       env=child_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 1 and "Error: hermes convert: s.parquet has no column 'embedding'" in r.stderr
