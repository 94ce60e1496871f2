"""Inputs and outputs on object storage: a real S3 server (moto's server mode) started by the test on localhost,
reached through pyarrow's S3FileSystem over HTTP (no client mocks). label / fit / stats / mix take s3:// URIs
for inputs and outputs; outputs are published as complete objects (temporary object, then a move), the
manifest last; a rerun skips finished shards."""
import json

import numpy as np
import pytest

import hermes
from hermes.label import read_labels

from conftest import DATA, s3_keys, s3_put


@pytest.fixture(scope="module")
def data(tmp_path_factory, s3):
    """Bundled embeddings as three shards (npy, parquet, safetensors) on local disk and on the S3 server."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from safetensors.numpy import save_file

    d = tmp_path_factory.mktemp("uri")
    x = np.load(DATA / "pypi_minilm_20k.f16.npy")[:3000]
    np.save(d / "a.npy", x[:1200])
    pq.write_table(pa.table({"embedding": pa.FixedSizeListArray.from_arrays(pa.array(x[1200:2200].reshape(-1)),
                                                                             x.shape[1])}), d / "b.parquet",
                   row_group_size=300)
    save_file({"emb": x[2200:].astype(np.float32)}, str(d / "c.safetensors"))
    model = hermes.fit(x[:1500].astype(np.float32), (16, 8, 4), method="residual_kmeans", progress=False)
    model.save(d / "m.safetensors")
    for name in ["a.npy", "b.parquet", "c.safetensors", "m.safetensors"]:
        s3_put(s3, d / name, f"in/{name}" if name != "m.safetensors" else "models/m.safetensors")
    return dict(dir=d, x=x, model=model)


def _cli(*args):
    from click.testing import CliRunner

    from hermes.cli import main

    r = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    return r.output


def test_label_stats_mix_on_s3_equal_local(s3, data):
    d = data["dir"]
    _cli("label", "--model", d / "m.safetensors", "--out", d / "local", "--no-progress", "--device", "cpu",
         d / "a.npy", d / "b.parquet", d / "c.safetensors")
    out = _cli("label", "--model", "s3://hermes/models/m.safetensors", "--out", "s3://hermes/labels",
               "--no-progress", "--device", "cpu", "--batch-size", "500", "s3://hermes/in/")
    assert "labeled 3 shard(s) (3,000 rows" in out
    # published whole: only the final objects, no temporary ones
    assert s3_keys(s3, "labels/") == ["labels/a.parquet", "labels/b.parquet", "labels/c.parquet",
                                      "labels/manifest.json"]
    lab, ref = read_labels("s3://hermes/labels"), read_labels(d / "local")
    np.testing.assert_array_equal(lab.codes, ref.codes)
    np.testing.assert_array_equal(lab.rows, ref.rows)
    assert lab.files == [f"s3://hermes/labels/{n}.parquet" for n in "abc"]
    man = json.loads(s3.get_object(Bucket="hermes", Key="labels/manifest.json")["Body"].read())
    assert [e["source"] for e in man["shards"]] == [f"s3://hermes/in/{n}" for n in
                                                    ["a.npy", "b.parquet", "c.safetensors"]]
    assert man["rows"] == 3000
    # a rerun keeps the finished shards: one removed, only it is labeled again
    before = s3.head_object(Bucket="hermes", Key="labels/a.parquet")["ETag"]
    s3.delete_object(Bucket="hermes", Key="labels/b.parquet")
    out = _cli("label", "--model", "s3://hermes/models/m.safetensors", "--out", "s3://hermes/labels",
               "--no-progress", "--device", "cpu", "s3://hermes/in/")
    assert "labeled 1 shard(s) (1,000 rows" in out and "2 already done" in out
    assert s3.head_object(Bucket="hermes", Key="labels/a.parquet")["ETag"] == before
    np.testing.assert_array_equal(read_labels("s3://hermes/labels").codes, ref.codes)
    # stats reads labels and embeddings from S3: the same table as from local files
    emb = ["s3://hermes/in/a.npy", "s3://hermes/in/b.parquet", "s3://hermes/in/c.safetensors"]
    remote = _cli("stats", "s3://hermes/labels", *sum([["--embeddings", e] for e in emb], []), "--k", "5",
                  "--no-progress")
    local = _cli("stats", d / "local", *sum([["--embeddings", d / n] for n in
                                             ["a.npy", "b.parquet", "c.safetensors"]], []), "--k", "5",
                 "--no-progress")
    assert remote.splitlines()[:5] == local.splitlines()[:5]
    # mix writes its sample and plan to S3
    _cli("mix", "s3://hermes/labels", "--budget", "500", "--out", "s3://hermes/mix/sample.parquet")
    _cli("mix", d / "local", "--budget", "500", "--out", d / "sample.parquet")
    import pyarrow.parquet as pq

    got = pq.read_table("s3://hermes/mix/sample.parquet")
    want = pq.read_table(d / "sample.parquet")
    assert got.column("row").to_pylist() == want.column("row").to_pylist()
    assert s3_keys(s3, "mix/") == ["mix/sample.parquet", "mix/sample.plan.parquet"]


def test_fit_on_s3_and_atomic_publish(s3, data, tmp_path):
    out = _cli("fit", "s3://hermes/in/a.npy", "--out", "s3://hermes/models/fit.safetensors", "--method", "residual_kmeans",
               "--levels", "8,4", "--no-progress")
    assert "fitted residual_kmeans on 1,200 x 384" in out
    m = hermes.load("s3://hermes/models/fit.safetensors")
    local = hermes.fit(np.load(data["dir"] / "a.npy"), (8, 4), method="residual_kmeans", progress=False)
    for a, b in zip(m.codebooks, local.codebooks):
        np.testing.assert_array_equal(a, b)
    # a writer that fails leaves neither the object nor a temporary one
    from hermes._io import atomic_path

    def broken(tmp):
        with open(tmp, "wb") as f:
            f.write(b"half")
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError, match="disk on fire"):
        atomic_path("s3://hermes/models/broken.safetensors", broken)
    assert s3_keys(s3, "models/") == ["models/fit.safetensors", "models/m.safetensors"]
    with pytest.raises(FileNotFoundError, match="no such file: s3://hermes/in/nothing.npy"):
        hermes.label("s3://hermes/in/nothing.npy", data["model"], tmp_path / "o", progress=False)
