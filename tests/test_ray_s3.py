"""Labeling on Ray with inputs and outputs on object storage: a real S3 server (moto's server mode on localhost,
fixture `s3`) and a local Ray cluster (`ray start --head`, started by the test with the store's settings in its
environment, as `ray start` on the nodes of a real cluster would have them), driven by `hermes label --engine ray
--address` in a separate process.

The actors read their row ranges from s3:// shards and publish their parts under out/.hermes-parts on the store;
the driver joins them. Codes equal single-process `hermes label` of the same local files row for row; the
manifest lists every shard; no part or temporary object remains; a rerun keeps finished shards and the finished
parts of a shard left by a run that died, and removes a killed worker's temporary part object; `stats` and `mix`
read the labels from the store. Skipped without ray[data] or moto[server].
"""
import json
import subprocess
import sys

import numpy as np
import pytest

import hermes
from hermes.label import label_columns, read_labels

from conftest import ray_env, ray_shards_and_model, s3_keys, s3_put, start_ray_head, stop_ray_nodes

pytest.importorskip("ray", reason="ray is not installed (optional: pip install 'ray[data]', hermes-rvq[ray])")
pytest.importorskip("ray.data", reason="Ray Data is not installed (pip install 'ray[data]')")


@pytest.fixture(scope="module")
def cluster(s3, tmp_path_factory):
    """A local one-node Ray cluster (2 CPUs) whose workers have the S3 settings; two shards of the bundled
    embeddings (npy + parquet) and a model, on local disk and on the S3 server; the single-process labels of the
    local files."""
    env = ray_env()  # the hermes under test, and the AWS_* settings the `s3` fixture put in os.environ
    head, address, tmp = start_ray_head(env, num_cpus=2)  # it starts up while the data are prepared
    try:
        d = tmp_path_factory.mktemp("ray_s3")
        ray_shards_and_model(d, 4000, 2300, 400)
        for name in ["a.npy", "b.parquet"]:
            s3_put(s3, d / name, f"emb/{name}")
        s3_put(s3, d / "m.safetensors", "models/m.safetensors")
        hermes.label([d / "a.npy", d / "b.parquet"], d / "m.safetensors", d / "local", progress=False,
                     device="cpu")
        yield dict(dir=d, address=address, env=env, cwd=tmp)
    finally:
        stop_ray_nodes([head], tmp)


def _hermes(cluster, *args) -> str:
    """`python -m hermes ARGS` in a separate process (a Ray driver of its own), outside the repository."""
    r = subprocess.run([sys.executable, "-m", "hermes", *map(str, args)], env=cluster["env"], cwd=cluster["cwd"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


def _cli(*args) -> str:
    """`hermes ARGS` in this process (for the commands that start no Ray driver)."""
    from click.testing import CliRunner

    from hermes.cli import main

    r = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    return r.output


def _label_on_ray(cluster, run=_hermes) -> str:
    """`hermes label` of the shards on S3 into s3://hermes/labels on the test's Ray (by `run`: `_hermes`, or
    `_cli` when no Ray driver is needed)."""
    return run(cluster, "label", "s3://hermes/emb/", "--model", "s3://hermes/models/m.safetensors", "--out",
               "s3://hermes/labels", "--engine", "ray", "--address", cluster["address"], "--concurrency", "2",
               "--batch-size", "500", "--no-progress")


LABELS = ["labels/a.parquet", "labels/b.parquet", "labels/manifest.json"]


def _only_labels_left(s3) -> None:
    """Under labels/: the labels files and the manifest, and no part, no temporary object, not even a directory
    marker under .hermes-parts (the one object besides them: the marker pyarrow leaves for labels/ itself when
    the parts directory below it is deleted)."""
    assert s3_keys(s3, "labels/") == LABELS
    assert set(s3_keys(s3, "labels/", markers=True)) - {"labels/"} == set(LABELS)


def test_ray_label_s3_to_s3_equals_local(s3, cluster):
    import pyarrow as pa
    import pyarrow.parquet as pq

    d = cluster["dir"]
    out = _label_on_ray(cluster)
    assert "labeled 2 shard(s) (4,000 rows" in out and "0 already done" in out, out
    assert "ray: 1 node(s) labeled 4,000 rows" in out, out
    _only_labels_left(s3)
    lab, ref = read_labels("s3://hermes/labels"), read_labels(d / "local")
    np.testing.assert_array_equal(lab.codes, ref.codes)
    np.testing.assert_array_equal(lab.rows, ref.rows)
    np.testing.assert_array_equal(lab.shard, ref.shard)
    assert lab.files == ["s3://hermes/labels/a.parquet", "s3://hermes/labels/b.parquet"]
    man = json.loads(s3.get_object(Bucket="hermes", Key="labels/manifest.json")["Body"].read())
    assert [(e["source"], e["output"], e["rows"]) for e in man["shards"]] == [
        ("s3://hermes/emb/a.npy", "a.parquet", 2300), ("s3://hermes/emb/b.parquet", "b.parquet", 1700)]
    ref_man = json.loads((d / "local" / "manifest.json").read_text())
    assert [e["source_fingerprint"] for e in man["shards"]] == [e["source_fingerprint"] for e in ref_man["shards"]]
    assert man["rows"] == 4000 and man["model"]["fingerprint"] == ref_man["model"]["fingerprint"]

    # a rerun finds both shards done and starts no Ray driver (so it runs in this process)
    out = _label_on_ray(cluster, run=lambda _, *args: _cli(*args))
    assert "labeled 0 shard(s) (0 rows" in out and "2 already done" in out and "ray:" not in out, out
    assert s3_keys(s3, "labels/") == LABELS

    # as after a run that died while labeling b: b's labels file not published, its first range published as a
    # part on the store, and a temporary part object of a killed worker beside it. The rerun keeps a.parquet and
    # the finished part (the actors label the other 1,200 rows of b) and removes the temporary object.
    etag = s3.head_object(Bucket="hermes", Key="labels/a.parquet")["ETag"]
    s3.delete_object(Bucket="hermes", Key="labels/b.parquet")
    parts = f"labels/.hermes-parts/b.{man['model']['fingerprint']}.{man['shards'][1]['source_fingerprint']}"
    first = label_columns(ref.codes[ref.shard == 1][:500], ref.levels, 0)
    pq.write_table(pa.Table.from_pydict(first), d / "part.parquet")
    s3_put(s3, d / "part.parquet", f"{parts}/{0:012d}-{500:012d}.parquet")
    s3.put_object(Bucket="hermes", Key=f"{parts}/.{500:012d}-{1000:012d}.parquet.0123456789ab.tmp", Body=b"half")
    out = _label_on_ray(cluster)
    assert "labeled 1 shard(s) (1,700 rows" in out and "1 already done" in out, out
    assert "ray: 1 node(s) labeled 1,200 rows" in out, out
    assert s3.head_object(Bucket="hermes", Key="labels/a.parquet")["ETag"] == etag
    _only_labels_left(s3)
    lab = read_labels("s3://hermes/labels")
    np.testing.assert_array_equal(lab.codes, ref.codes)
    np.testing.assert_array_equal(lab.rows, ref.rows)

    # stats and mix read the labels on the store: the same table and sample as from the local labels
    remote = _cli("stats", "s3://hermes/labels", "--embeddings", "s3://hermes/emb/a.npy", "--embeddings",
                  "s3://hermes/emb/b.parquet", "--k", "5", "--no-progress")
    local = _cli("stats", d / "local", "--embeddings", d / "a.npy", "--embeddings", d / "b.parquet", "--k", "5",
                 "--no-progress")
    assert remote == local and "4,000 documents in 2 labels file(s)" in remote, remote
    _cli("mix", "s3://hermes/labels", "--budget", "600", "--out", "s3://hermes/mix/sample.parquet")
    _cli("mix", d / "local", "--budget", "600", "--out", d / "sample.parquet")
    got, want = pq.read_table("s3://hermes/mix/sample.parquet"), pq.read_table(d / "sample.parquet")
    assert got.num_rows == want.num_rows > 0
    assert got.column("row").to_pylist() == want.column("row").to_pylist()
    assert s3_keys(s3, "mix/") == ["mix/sample.parquet", "mix/sample.plan.parquet"]
