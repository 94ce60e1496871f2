"""hermes.label: streaming labeling of .npy / .safetensors / parquet shards, atomic outputs, resume, bad input."""
import importlib
import json
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import hermes
from hermes.buckets import all_bucket_ids

from conftest import REPO, child_env

L = importlib.import_module("hermes.label")  # the module (hermes.label may be the function once exported)

D = 16
LEVELS = (7, 5, 3)


def tiny_model(d=D, levels=LEVELS, seed=0):
    rng = np.random.default_rng(seed)
    cbs = [(rng.standard_normal((K, d)) * 0.5 ** l).astype(np.float32) for l, K in enumerate(levels)]
    return hermes.Model(cbs, metric="cos")


def embeddings(n, d=D, seed=1, dtype=np.float32):
    return np.random.default_rng(seed).standard_normal((n, d)).astype(dtype)


def write_npy(path, x):
    np.save(path, x)
    return Path(path)


def write_parquet(path, x, column="embedding", fixed=False, extra=None):
    t = pa.list_(pa.from_numpy_dtype(x.dtype), x.shape[1]) if fixed else pa.list_(pa.from_numpy_dtype(x.dtype))
    arr = pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), x.shape[1]) if fixed else \
        pa.array(list(x), type=t)
    cols = {column: arr, "id": pa.array(np.arange(len(x)))}
    cols.update(extra or {})
    pq.write_table(pa.table(cols), path, row_group_size=64)
    return Path(path)


def write_safetensors(path, tensors):
    from safetensors.numpy import save_file

    save_file(tensors, str(path))
    return Path(path)


def read_out(path):
    t = pq.read_table(path)
    meta = json.loads(t.schema.metadata[b"hermes"])
    return t, meta


def visible(out_dir):
    return sorted(p.name for p in Path(out_dir).iterdir())


# ----------------------------------------------------------------------------------- formats
@pytest.mark.parametrize("kind", ["npy-f32", "npy-f16", "safetensors", "safetensors-bf16", "parquet-list",
                                  "parquet-fixed"])
def test_label_matches_assign_codes(tmp_path, kind):
    model = tiny_model()
    n = 257
    x = embeddings(n, dtype=np.float16 if kind == "npy-f16" else np.float32)
    if kind.startswith("npy"):
        src = write_npy(tmp_path / "s.npy", x)
    elif kind == "safetensors":
        src = write_safetensors(tmp_path / "s.safetensors", {"emb": x})
    elif kind == "safetensors-bf16":
        import torch
        from safetensors.torch import save_file

        xt = torch.from_numpy(x).bfloat16()
        save_file({"emb": xt, "ids": torch.arange(n)}, str(tmp_path / "s.safetensors"))
        src, x = tmp_path / "s.safetensors", xt.float().numpy()
    else:
        src = write_parquet(tmp_path / "s.parquet", x, fixed=kind == "parquet-fixed")
    rep = L.label(src, model, tmp_path / "out", batch_size=31, progress=False)
    t, meta = read_out(tmp_path / "out" / "s.parquet")
    codes = np.stack([t.column(f"c{l + 1}").to_numpy() for l in range(3)], 1)
    np.testing.assert_array_equal(codes, hermes.assign_codes(x, model))
    np.testing.assert_array_equal(t.column("row").to_numpy(), np.arange(n))
    ids = all_bucket_ids(codes, LEVELS)
    for l, name in enumerate(["bucket_L1", "bucket_L12", "bucket_L123"]):
        np.testing.assert_array_equal(t.column(name).to_numpy(), ids[:, l])
    assert t.schema.field("c1").type == pa.int16() and t.schema.field("bucket_L12").type == pa.int64()
    assert meta["model"]["levels"] == list(LEVELS) and meta["rows"] == n and meta["shard"] == src.name
    assert meta["source"] == str(src.resolve())
    assert rep.labeled == ["s.parquet"] and rep.rows == n
    assert visible(tmp_path / "out") == ["manifest.json", "s.parquet"]


def test_codes_dtype_widens_for_large_levels(tmp_path):
    model = tiny_model(levels=(40000, 3))
    src = write_npy(tmp_path / "a.npy", embeddings(50))
    L.label(src, model, tmp_path / "out", progress=False)
    t, _ = read_out(tmp_path / "out" / "a.parquet")
    assert t.schema.field("c1").type == pa.int32() and t.schema.field("c2").type == pa.int16()


def test_batches_bound_memory(tmp_path, monkeypatch):
    """assign_codes sees at most batch_size rows at a time, and every row exactly once."""
    import hermes.assign as A

    seen = []
    real = A.assign_codes
    monkeypatch.setattr(A, "assign_codes", lambda x, m, **kw: seen.append(x.shape[0]) or real(x, m, **kw))
    src = write_parquet(tmp_path / "p.parquet", embeddings(300))
    L.label(src, tiny_model(), tmp_path / "out", batch_size=50, progress=False)
    assert max(seen) <= 64 and sum(seen) == 300  # parquet record batches also stop at row groups (64)


def test_parquet_stream_decodes_small_batches_and_writes_batch_size_row_groups(tmp_path, monkeypatch):
    """A one-row-group parquet file is decoded in record batches of PARQUET_STREAM_BYTES (so the decode overlaps
    the assignment), smaller than batch_size; the labels are still written batch_size rows (or a little more)
    to a row group, and equal assign_codes."""
    import hermes.assign as A
    import hermes.readers as R

    seen = []
    real = A.assign_codes
    monkeypatch.setattr(A, "assign_codes", lambda x, m, **kw: seen.append(x.shape[0]) or real(x, m, **kw))
    monkeypatch.setattr(R, "PARQUET_STREAM_BYTES", 4 * D * 7)  # 7 float32 rows
    x = embeddings(300)
    src = tmp_path / "one.parquet"
    pq.write_table(pa.table({"embedding": pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), D)}), src,
                   row_group_size=1000)
    model = tiny_model()
    L.label(src, model, tmp_path / "out", batch_size=50, progress=False)
    assert max(seen) == 7 and sum(seen) == 300
    md = pq.ParquetFile(tmp_path / "out" / "one.parquet").metadata
    groups = [md.row_group(i).num_rows for i in range(md.num_row_groups)]
    assert sum(groups) == 300 and all(50 <= g < 57 for g in groups[:-1]) and 0 < groups[-1] < 57, groups
    lab = L.read_labels(tmp_path / "out")
    np.testing.assert_array_equal(lab.rows, np.arange(300))
    np.testing.assert_array_equal(lab.codes, real(x, model))


def test_manifest_rerun_and_directories(tmp_path):
    model = tiny_model()
    shards = tmp_path / "shards"
    shards.mkdir()
    xs = [embeddings(n, seed=i) for i, n in enumerate([40, 0, 33])]
    for i, x in enumerate(xs):
        write_npy(shards / f"part-{i}.npy", x)
    out = tmp_path / "out"
    rep = L.label(shards, model, out, progress=False)
    assert rep.labeled == ["part-0.parquet", "part-1.parquet", "part-2.parquet"] and rep.skipped == []
    man = json.loads((out / "manifest.json").read_text())
    assert [(e["output"], e["rows"]) for e in man["shards"]] == [("part-0.parquet", 40), ("part-1.parquet", 0),
                                                                ("part-2.parquet", 33)]
    assert man["rows"] == 73 and man["model"]["fingerprint"] == L.model_fingerprint(model)
    mtimes = {p: p.stat().st_mtime_ns for p in out.glob("*.parquet")}
    rep2 = L.label(shards, model, out, progress=False)
    assert rep2.labeled == [] and len(rep2.skipped) == 3 and rep2.rows == 73
    assert {p: p.stat().st_mtime_ns for p in out.glob("*.parquet")} == mtimes
    lab = L.read_labels(out)
    np.testing.assert_array_equal(lab.codes, hermes.assign_codes(np.concatenate(xs), model))
    assert lab.shards == ["part-0.npy", "part-1.npy", "part-2.npy"] and lab.levels == LEVELS


def test_more_shards_later_extend_the_manifest(tmp_path):
    model = tiny_model()
    a = write_npy(tmp_path / "a.npy", embeddings(10))
    b = write_npy(tmp_path / "b.npy", embeddings(12, seed=3))
    L.label(a, model, tmp_path / "out", progress=False)
    rep = L.label(b, model, tmp_path / "out", progress=False)
    assert [e["output"] for e in rep.manifest["shards"]] == ["a.parquet", "b.parquet"] and rep.rows == 22


def test_stale_output_is_relabeled(tmp_path):
    model = tiny_model()
    src = write_npy(tmp_path / "a.npy", embeddings(20))
    L.label(src, model, tmp_path / "out", progress=False)
    write_npy(src, embeddings(25))  # the shard grew: its labels are stale
    with pytest.warns(UserWarning, match="stale"):
        rep = L.label(src, model, tmp_path / "out", progress=False)
    assert rep.labeled == ["a.parquet"] and read_out(tmp_path / "out" / "a.parquet")[0].num_rows == 25


# ---------------------------------------------------------------------------------- kill/restart
def test_crash_mid_shard_leaves_nothing_partial_and_rerun_completes(tmp_path, monkeypatch):
    model = tiny_model()
    xs = [embeddings(100, seed=i) for i in range(3)]
    paths = [write_npy(tmp_path / f"s{i}.npy", x) for i, x in enumerate(xs)]
    out = tmp_path / "out"

    def crash(source, rows_done):
        if source.endswith("s1.npy") and rows_done >= 40:
            raise KeyboardInterrupt("simulated kill")

    monkeypatch.setattr(L, "_on_batch_written", crash)
    with pytest.raises(KeyboardInterrupt):
        L.label(paths, model, out, batch_size=20, progress=False)
    assert visible(out) == ["s0.parquet"]  # no partial s1, no temp file, no manifest
    monkeypatch.setattr(L, "_on_batch_written", lambda source, rows_done: None)
    rep = L.label(paths, model, out, batch_size=20, progress=False)
    assert rep.skipped == ["s0.parquet"] and rep.labeled == ["s1.parquet", "s2.parquet"]
    lab = L.read_labels(out)
    assert lab.codes.shape[0] == 300  # nothing lost, nothing duplicated
    np.testing.assert_array_equal(lab.codes, hermes.assign_codes(np.concatenate(xs), model))
    np.testing.assert_array_equal(lab.rows, np.tile(np.arange(100), 3))


def test_sigkill_mid_shard_then_rerun(tmp_path):
    """A real SIGKILL while a shard is half written: only a hidden temp file remains, and the rerun removes it."""
    model = tiny_model()
    model.save(tmp_path / "m.safetensors")
    xs = [embeddings(100, seed=i) for i in range(2)]
    for i, x in enumerate(xs):
        write_npy(tmp_path / f"s{i}.npy", x)
    code = textwrap.dedent(f"""
        import importlib, os, signal
        L = importlib.import_module("hermes.label")
        def kill(source, rows_done):
            if source.endswith("s1.npy") and rows_done >= 50:
                os.kill(os.getpid(), signal.SIGKILL)
        L._on_batch_written = kill
        L.label([{str(tmp_path / 's0.npy')!r}, {str(tmp_path / 's1.npy')!r}], {str(tmp_path / 'm.safetensors')!r},
                {str(tmp_path / 'out')!r}, batch_size=25, progress=False)
    """)
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=child_env(), capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == -signal.SIGKILL, r.stderr
    names = visible(tmp_path / "out")
    assert [n for n in names if not n.startswith(".")] == ["s0.parquet"]
    assert any(n.startswith(".s1.parquet.") and n.endswith(".tmp") for n in names)
    rep = L.label([tmp_path / "s0.npy", tmp_path / "s1.npy"], tmp_path / "m.safetensors", tmp_path / "out",
                  batch_size=25, progress=False)
    assert rep.labeled == ["s1.parquet"] and rep.skipped == ["s0.parquet"]
    assert visible(tmp_path / "out") == ["manifest.json", "s0.parquet", "s1.parquet"]
    np.testing.assert_array_equal(L.read_labels(tmp_path / "out").codes,
                                  hermes.assign_codes(np.concatenate(xs), model))


# ----------------------------------------------------------------------------------- bad input
def _no_partial(out):
    out = Path(out)
    return not out.exists() or all(not n.startswith(".") for n in visible(out))


def test_dimension_mismatch_names_file_and_writes_nothing(tmp_path):
    good = write_npy(tmp_path / "good.npy", embeddings(10))
    bad = write_npy(tmp_path / "bad.npy", embeddings(10, d=12))
    with pytest.raises(ValueError, match=r"bad\.npy has embeddings of dimension 12, but the model expects d=16"):
        L.label([good, bad], tiny_model(), tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()  # every shard is checked before anything is written


@pytest.mark.parametrize("case", ["npy-truncated", "npy-garbage", "npy-int", "npy-3d", "parquet-truncated",
                                  "safetensors-truncated", "extension"])
def test_unreadable_shards(tmp_path, case):
    if case.startswith("npy"):
        p = tmp_path / "x.npy"
        if case == "npy-int":
            np.save(p, np.ones((4, D), np.int32))
        elif case == "npy-3d":
            np.save(p, np.ones((2, 2, D), np.float32))
        else:
            np.save(p, embeddings(100))
            data = p.read_bytes()
            p.write_bytes(data[:len(data) // 2] if case == "npy-truncated" else b"\x00garbage" + data[8:])
        msg = {"npy-int": r"x\.npy holds int32 values", "npy-3d": r"x\.npy holds a 3-d array"}.get(
            case, r"x\.npy is not a readable \.npy file")
    elif case == "parquet-truncated":
        p = write_parquet(tmp_path / "x.parquet", embeddings(100))
        p.write_bytes(p.read_bytes()[:-20])
        msg = r"x\.parquet is not a readable parquet file"
    elif case == "safetensors-truncated":
        p = write_safetensors(tmp_path / "x.safetensors", {"e": embeddings(100)})
        p.write_bytes(p.read_bytes()[:-100])
        msg = r"x\.safetensors is not a readable \.safetensors file"
    else:
        p = tmp_path / "x.csv"
        p.write_text("1,2\n")
        msg = r"x\.csv has an unsupported extension '\.csv'"
    with pytest.raises(ValueError, match=msg):
        L.label(p, tiny_model(), tmp_path / "out", progress=False)
    assert _no_partial(tmp_path / "out")


def test_parquet_column_errors(tmp_path):
    x = embeddings(20)
    p = write_parquet(tmp_path / "p.parquet", x, column="vec")
    with pytest.raises(ValueError, match=r"p\.parquet has no column 'embedding' \(columns: \['vec', 'id'\]\)"):
        L.label(p, tiny_model(), tmp_path / "out", progress=False)
    with pytest.raises(ValueError, match=r"column 'id' has type int64; embeddings must be a list"):
        L.label(p, tiny_model(), tmp_path / "out", column="id", progress=False)
    rows = list(x)
    rows[13] = rows[13][:5]
    pq.write_table(pa.table({"embedding": pa.array(rows, pa.list_(pa.float32()))}), tmp_path / "r.parquet")
    with pytest.raises(ValueError, match=r"r\.parquet, column 'embedding': row 13 has 5 values, row 0 has 16"):
        L.label(tmp_path / "r.parquet", tiny_model(), tmp_path / "out", batch_size=8, progress=False)
    rows = list(x)
    rows[9] = None
    pq.write_table(pa.table({"embedding": pa.array(rows, pa.list_(pa.float32()))}), tmp_path / "n.parquet")
    with pytest.raises(ValueError, match=r"n\.parquet, column 'embedding': row 9 is null"):
        L.label(tmp_path / "n.parquet", tiny_model(), tmp_path / "out", batch_size=8, progress=False)
    assert _no_partial(tmp_path / "out") and not (tmp_path / "out" / "r.parquet").exists()


def test_nan_row_is_named_across_batches(tmp_path):
    x = embeddings(100)
    x[77, 3] = np.nan
    good = write_npy(tmp_path / "a.npy", embeddings(10))
    p = write_parquet(tmp_path / "nan.parquet", x)
    with pytest.raises(ValueError, match=r"nan\.parquet: row 77 contains NaN or Inf"):
        L.label([good, p], tiny_model(), tmp_path / "out", batch_size=30, progress=False)
    assert visible(tmp_path / "out") == ["a.parquet"]  # the finished shard stays; nothing of the bad one


def test_safetensors_tensor_choice(tmp_path):
    x = embeddings(30)
    p = write_safetensors(tmp_path / "t.safetensors", {"a": x, "b": x[:, :8].copy()})
    with pytest.raises(ValueError, match=r"t\.safetensors holds 2 2-d tensors \['a', 'b'\]; name the embeddings"):
        L.label(p, tiny_model(), tmp_path / "out", progress=False)
    with pytest.raises(ValueError, match=r"t\.safetensors has no tensor 'c'"):
        L.label(p, tiny_model(), tmp_path / "out", tensor="c", progress=False)
    L.label(p, tiny_model(), tmp_path / "out", tensor="a", progress=False)
    assert L.read_labels(tmp_path / "out").codes.shape == (30, 3)


def test_same_stem_and_other_model(tmp_path):
    (tmp_path / "d1").mkdir()
    (tmp_path / "d2").mkdir()
    a = write_npy(tmp_path / "d1" / "x.npy", embeddings(5))
    b = write_npy(tmp_path / "d2" / "x.npy", embeddings(5))
    with pytest.raises(ValueError, match=r"d1/x\.npy and .*d2/x\.npy would both write x\.parquet"):
        L.label([a, b], tiny_model(), tmp_path / "out", progress=False)
    L.label(a, tiny_model(), tmp_path / "out", progress=False)
    with pytest.raises(ValueError, match=r"x\.parquet exists and was labeled by another model"):
        L.label(a, tiny_model(seed=5), tmp_path / "out", progress=False)
    rep = L.label(a, tiny_model(seed=5), tmp_path / "out", progress=False, overwrite=True)
    assert rep.labeled == ["x.parquet"]
    (tmp_path / "out" / "x.parquet").write_bytes(b"not parquet")  # a foreign or damaged file is not overwritten
    with pytest.raises(ValueError, match=r"x\.parquet exists but is not a readable hermes labels file"):
        L.label(a, tiny_model(seed=5), tmp_path / "out", progress=False)
    assert (tmp_path / "out" / "x.parquet").read_bytes() == b"not parquet"


def test_bad_arguments(tmp_path):
    src = write_npy(tmp_path / "a.npy", embeddings(5))
    with pytest.raises(ValueError, match="batch_size must be a positive integer, got 0"):
        L.label(src, tiny_model(), tmp_path / "out", batch_size=0)
    with pytest.raises(TypeError, match="model must be a hermes.Model or a path"):
        L.label(src, object(), tmp_path / "out")
    with pytest.raises(FileNotFoundError, match="no such file: .*missing.npy"):
        L.label(tmp_path / "missing.npy", tiny_model(), tmp_path / "out")
    with pytest.raises(ValueError, match="device must be 'cpu', 'cuda'"):
        L.label(src, tiny_model(), tmp_path / "out", device="tpu")
    if not hermes.cuda_available():
        with pytest.raises(RuntimeError, match="device='cuda' but the CUDA path is unavailable"):
            L.label(src, tiny_model(), tmp_path / "out", device="cuda")


def test_read_labels_column_from_parquet_source(tmp_path):
    x = embeddings(40)
    q = np.linspace(0, 1, 40)
    src = write_parquet(tmp_path / "p.parquet", x, extra={"quality": pa.array(q)})
    L.label(src, tiny_model(), tmp_path / "out", progress=False)
    lab = L.read_labels(tmp_path / "out")
    np.testing.assert_array_equal(lab.column("quality"), q)
    np.testing.assert_array_equal(lab.column("c2"), lab.codes[:, 1])  # columns of the labels file itself
    with pytest.raises(ValueError, match=r"column 'nope' is neither in .*p\.parquet nor in its source .*p\.parquet"):
        lab.column("nope")


def test_read_labels_rejects_mixed_models(tmp_path):
    a = write_npy(tmp_path / "a.npy", embeddings(5))
    L.label(a, tiny_model(), tmp_path / "o1", progress=False)
    L.label(a, tiny_model(seed=3), tmp_path / "o2", progress=False)
    with pytest.raises(ValueError, match=r"o2/a\.parquet was labeled by another model"):
        L.read_labels([tmp_path / "o1", tmp_path / "o2"])
    pq.write_table(pa.table({"x": [1]}), tmp_path / "plain.parquet")
    with pytest.raises(ValueError, match=r"plain\.parquet is not a hermes labels file"):
        L.read_labels(tmp_path / "plain.parquet")


# ----------------------------------------------------------------------------------- real data
def test_real_data_slice(tmp_path, real_embeddings):
    """2,000 bundled MiniLM rows: npy (float16, memory-mapped) and parquet give the codes of assign_codes."""
    x = real_embeddings[:2000]
    rng = np.random.default_rng(0)
    c1 = x[rng.choice(2000, 32, replace=False)].astype(np.float32)
    r = x.astype(np.float32) - c1[np.argmax(x.astype(np.float32) @ c1.T, 1)]
    c2 = r[rng.choice(2000, 16, replace=False)]
    model = hermes.Model([c1, c2], metric="cos")
    np.save(tmp_path / "real.npy", x)
    write_parquet(tmp_path / "realp.parquet", x.astype(np.float32), fixed=True)
    rep = L.label([tmp_path / "real.npy", tmp_path / "realp.parquet"], model, tmp_path / "out", batch_size=700,
                  progress=False)
    lab = L.read_labels(tmp_path / "out")
    want = hermes.assign_codes(x, model)
    np.testing.assert_array_equal(lab.codes[:2000], want)
    np.testing.assert_array_equal(lab.codes[2000:], hermes.assign_codes(x.astype(np.float32), model))
    assert rep.rows == 4000 and len(np.unique(want[:, 0])) > 16  # the data spread over many L1 buckets


# ------------------------------------------------------------------------------------------ ray
def test_ray_label_batch_without_ray():
    from hermes.ray import label_batch

    x = embeddings(9)
    rows = np.empty(9, dtype=object)  # how Ray hands over a column of variable-length lists
    for i in range(9):
        rows[i] = x[i]
    out = label_batch({"embedding": rows, "id": np.arange(9)}, tiny_model())
    np.testing.assert_array_equal(np.stack([out["c1"], out["c2"], out["c3"]], 1),
                                  hermes.assign_codes(x, tiny_model()))
    assert "id" in out and "row" not in out
    with pytest.raises(ValueError, match="the batch has no column 'vec'"):
        label_batch({"embedding": x}, tiny_model(), column="vec")


def test_ray_label_dataset(tmp_path, monkeypatch):
    ray = pytest.importorskip("ray", reason="ray is not installed (optional: pip install 'ray[data]')")
    from conftest import child_env

    from hermes.ray import label_dataset

    # Ray workers import from the driver's working directory first: from the repository root that is the
    # uncompiled source tree. Start Ray elsewhere, with the workers importing the hermes this process uses.
    monkeypatch.chdir(tmp_path)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": child_env()["PYTHONPATH"]}})
    try:
        x = embeddings(50)
        ds = ray.data.from_items([{"embedding": row, "id": i} for i, row in enumerate(x)])
        rows = label_dataset(ds, tiny_model(), batch_size=16).take_all()
    finally:
        ray.shutdown()
    got = np.array([[r["c1"], r["c2"], r["c3"]] for r in sorted(rows, key=lambda r: r["id"])])
    np.testing.assert_array_equal(got, hermes.assign_codes(x, tiny_model()))


# ------------------------------------------------------------------------------------------ gpu
@pytest.mark.gpu
def test_cuda_pipeline_matches_cpu(tmp_path):
    model = tiny_model()
    x = embeddings(1000)
    src = write_npy(tmp_path / "g.npy", x)
    L.label(src, model, tmp_path / "cpu", device="cpu", batch_size=300, progress=False)
    L.label(src, model, tmp_path / "gpu", device="cuda", batch_size=300, progress=False)
    a, b = L.read_labels(tmp_path / "cpu"), L.read_labels(tmp_path / "gpu")
    np.testing.assert_array_equal(a.codes, b.codes)
    x[555, 0] = np.inf
    write_npy(tmp_path / "bad.npy", x)
    with pytest.raises(ValueError, match=r"bad\.npy: row 555 contains NaN or Inf"):
        L.label(tmp_path / "bad.npy", model, tmp_path / "gpu", device="cuda", batch_size=300, progress=False)
    assert not (tmp_path / "gpu" / "bad.parquet").exists()
