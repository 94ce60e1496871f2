"""The hermes CLI (click): fit -> label -> stats -> mix -> info, --help everywhere, one-line errors for bad input."""
import json
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

import hermes
from hermes.cli import main

from conftest import REPO, child_env

D = 16
LEVELS = (6, 4, 3)


@pytest.fixture
def run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)

    def _run(*args, ok=True):
        r = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
        if ok:
            assert r.exit_code == 0, r.output
        return r

    return _run


def _fail(run, *args, match):
    """Runs a command that must fail (exit 1, or 2 for a usage error) with one 'Error: ...' line matching `match`."""
    import re

    r = run(*args, ok=False)
    assert r.exit_code in (1, 2), r.output
    err = [ln for ln in r.output.splitlines() if ln.startswith("Error: ")]
    assert len(err) == 1 and "Traceback" not in r.output, r.output
    assert re.search(match, err[0]), err[0]
    return err[0]


@pytest.fixture
def world(tmp_path):
    """A tiny model file, two shards (npy + parquet with quality/tokens columns), and their embeddings."""
    rng = np.random.default_rng(0)
    model = hermes.Model([(rng.standard_normal((K, D)) * 0.5 ** l).astype(np.float32) for l, K in enumerate(LEVELS)])
    model.save(tmp_path / "model.safetensors")
    x1 = rng.standard_normal((120, D)).astype(np.float32)
    x2 = rng.standard_normal((80, D)).astype(np.float32)
    np.save(tmp_path / "a.npy", x1)
    q = rng.random(80)
    pq.write_table(pa.table({"embedding": pa.array(list(x2), pa.list_(pa.float32())), "quality": q,
                             "tokens": rng.integers(1, 50, 80)}), tmp_path / "b.parquet")
    np.save(tmp_path / "all.npy", np.concatenate([x1, x2]))
    return dict(model=model, x=np.concatenate([x1, x2]), q2=q, dir=tmp_path)


def _label(run, w):
    run("label", "--model", "model.safetensors", "--out", "labels", "a.npy", "b.parquet", "--no-progress")
    return w["dir"] / "labels"


def test_help_on_every_command(run):
    r = run("--help")
    for cmd in ["fit", "label", "stats", "mix", "info"]:
        assert cmd in r.output
        sub = run(cmd, "--help")
        assert sub.output.startswith(f"Usage: main {cmd}") or f"{cmd} [OPTIONS]" in sub.output
    assert "--budget" in run("mix", "--help").output and "--model" in run("assign", "--help").output


def test_python_dash_m_hermes(tmp_path):
    r = subprocess.run([sys.executable, "-m", "hermes", "--version"], cwd=tmp_path, env=child_env(),
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == f"hermes {hermes.__version__}", r.stderr


def test_label_then_alias_rerun(run, world):
    r = run("label", "--model", "model.safetensors", "--out", "labels", "a.npy", "b.parquet", "--batch-size", "50",
            "--no-progress")
    assert "labeled 2 shard(s) (200 rows" in r.output and "lists 2 shard(s), 200 rows" in r.output
    lab = pq.read_table(world["dir"] / "labels" / "b.parquet")
    codes = np.stack([lab.column(f"c{i}").to_numpy() for i in (1, 2, 3)], 1)
    np.testing.assert_array_equal(codes, hermes.assign_codes(world["x"][120:], world["model"]))
    r = run("assign", "-m", "model.safetensors", "-o", "labels", "a.npy", "b.parquet", "--no-progress")
    assert "labeled 0 shard(s)" in r.output and "2 already done" in r.output


def test_stats(run, world):
    _label(run, world)
    classes = (world["x"][:, 0] > 0).astype(np.int64)
    np.save(world["dir"] / "classes.npy", classes)
    r = run("stats", "labels", "--embeddings", "a.npy", "--embeddings", "b.parquet", "--labels", "classes.npy",
            "--k", "5", "--no-progress")
    lines = r.output.splitlines()
    assert lines[0] == "200 documents in 2 labels file(s), levels 6,4,3"
    head = lines[1].split()
    assert head == ["name", "n_buckets", "entropy", "effective_buckets", "centroid_cosine", "recall_at_k", "nmi",
                    "purity"]
    codes = hermes.assign_codes(world["x"], world["model"])
    l1 = [ln.split() for ln in lines if ln.startswith("L1 ")][0]
    assert int(l1[1]) == len(np.unique(codes[:, 0]))
    from hermes.metrics import purity

    assert float(l1[7]) == pytest.approx(purity(classes, codes[:, 0]), rel=1e-5)
    assert any(ln.startswith("L123 ") for ln in lines) and "pool sizes" in r.output
    assert "centroid_cosine over all 200 documents; recall_at_k (k=5): every document searched against all 200" \
        in r.output
    from hermes.metrics import recall_at_k

    ids = hermes.buckets.bucket_ids(codes, 1, LEVELS)
    assert float(l1[5]) == pytest.approx(recall_at_k(world["x"], ids, 5), abs=1e-5)
    r3 = run("stats", "labels", "--embeddings", "all.npy", "--k", "5", "--sample", "50", "--queries", "20",
             "--no-progress")
    assert "centroid_cosine over a sample of 50 documents (seed 0); recall_at_k (k=5): 20 seeded queries searched " \
           "against a sample of 50 documents (seed 0)" in r3.output
    r2 = run("stats", "labels")  # without embeddings: entropy and pool sizes only
    assert "centroid_cosine" not in r2.output and "share_below" in r2.output
    # document-weighted pool sizes, and the eligible pool under quality top-p
    pool_head = [ln for ln in r2.output.splitlines() if ln.startswith("name ") and "nominal" in ln][0].split()
    row = dict(zip(pool_head, [ln for ln in r2.output.splitlines() if ln.startswith("L12 ")][-1].split()))
    sizes = np.bincount(hermes.buckets.bucket_ids(codes, 2, LEVELS))
    sizes = sizes[sizes > 0]
    per_doc = np.repeat(sizes, sizes)
    assert float(row["doc_median"]) == np.quantile(per_doc, 0.5, method="inverted_cdf")
    assert float(row["doc_p90"]) == np.quantile(per_doc, 0.9, method="inverted_cdf")
    q = world["x"][:, 1].astype(np.float64)
    np.save(world["dir"] / "q.npy", q)
    r4 = run("stats", "labels", "--quality", "q.npy", "--p", "0.5")
    assert "eligible pool under quality top-p = 0.5" in r4.output
    el = [ln.split() for ln in r4.output.splitlines() if ln.startswith("L1 ")][-1]
    from hermes.mix import probabilities

    kept = int((probabilities(codes, LEVELS, depth=1, stage2="quality", quality=q, p=0.5) > 0).sum())
    assert int(el[2]) == kept


def test_stats_plot(run, world):
    _label(run, world)
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        _fail(run, "stats", "labels", "--plot", "sizes.png", match="--plot needs matplotlib, which is not installed")
        assert not (world["dir"] / "sizes.png").exists()
        return
    run("stats", "labels", "--plot", "sizes.png")
    assert (world["dir"] / "sizes.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_mix_coverage_and_quality(run, world):
    d = _label(run, world)
    r = run("mix", "labels", "--budget", "60", "--depth", "2", "--out", "s.parquet", "--seed", "3")
    assert r.output.startswith("drew 60 documents from ")
    s = pq.read_table(world["dir"] / "s.parquet")
    plan = pq.read_table(world["dir"] / "s.plan.parquet").to_pydict()
    assert s.num_rows == 60 and sum(plan["drawn"]) == 60
    shard = s.column("shard").to_pylist()
    rows = s.column("row").to_numpy()
    assert set(shard) <= {"a.npy", "b.parquet"}
    keys = list(zip(shard, rows.tolist()))
    assert len(set(keys)) == 60  # without replacement
    # per L1 bucket: target, drawn, exhausted, in the plan and in the output
    l1, first = np.unique(plan["l1"], return_index=True)
    l1_drawn = np.asarray(plan["l1_drawn"])[first]
    np.testing.assert_array_equal(l1_drawn, [int((s.column("l1").to_numpy() == b).sum()) for b in l1])
    assert np.all(np.abs(l1_drawn - np.asarray(plan["l1_target"])[first]) < 1 + 1e-9)
    assert "drawn vs target per L1 bucket: max |drawn - target| = " in r.output
    assert ("none exhausted" in r.output) == (not any(plan["l1_exhausted"]))
    codes = hermes.assign_codes(world["x"], world["model"])
    glob_idx = np.array([r if sh == "a.npy" else 120 + r for sh, r in keys])
    np.testing.assert_array_equal(s.column("l1").to_numpy(), codes[glob_idx, 0])
    np.testing.assert_array_equal(s.column("bucket").to_numpy(), codes[glob_idx, 0] * LEVELS[1] + codes[glob_idx, 1])
    # quality from the parquet source's column for b, from a file for everything
    q = np.concatenate([np.linspace(0, 1, 120), world["q2"]])
    np.save(world["dir"] / "q.npy", q)
    run("mix", "labels", "--budget", "20", "--stage2", "quality", "--quality", "q.npy", "--p", "0.5",
        "--out", "sq.parquet", "--plan", "plan.csv")
    header = (world["dir"] / "plan.csv").read_text().splitlines()[0]
    assert header.replace('"', "").startswith("l1,bucket,c1,c2,size,eligible,mass")
    run("mix", str(d / "b.parquet"), "--budget", "10", "--stage2", "quality", "--quality-col", "quality",
        "--out", "sb.parquet")
    assert pq.read_table(world["dir"] / "sb.parquet").num_rows == 10
    r = run("mix", "labels", "--budget", "300", "--tokens-col", "tokens", "--out", "t.parquet", ok=False)
    assert r.exit_code == 1 and "column 'tokens' is not in labels/a.parquet, and its source" in r.output
    assert "a.npy is not an existing parquet file" in r.output
    r = run("mix", str(d / "b.parquet"), "--budget", "300", "--tokens-col", "tokens", "--out", "t.parquet")
    assert "tokens in" in r.output


def test_mix_bad_input(run, world):
    _label(run, world)
    q = np.concatenate([np.ones(120), world["q2"]])
    q[150] = np.nan
    np.save(world["dir"] / "qnan.npy", q)
    _fail(run, "mix", "labels", "--budget", "10", "--stage2", "quality", "--quality", "qnan.npy", "--out", "o.parquet",
          match=r"--quality: qnan\.npy is nan at row 30 of shard b\.parquet \(row 150 overall, 1 such rows\)")
    (world["dir"] / "w.json").write_text(json.dumps({"0": 1.0, "999": 2.0}))
    _fail(run, "mix", "labels", "--budget", "10", "--stage1", "w.json", "--out", "o.parquet",
          match=r"stage1 file 'w\.json' names 1 bucket\(s\) that are not occupied L1 buckets, e\.g\. \['999'\]")
    _fail(run, "mix", "labels", "--budget", "500", "--out", "o.parquet",
          match=r"budget=500 exceeds the pool of 200 documents")
    _fail(run, "mix", "labels", "--budget", "10", "--stage2", "quality", "--out", "o.parquet",
          match=r"--stage2 quality needs --quality FILE or --quality-col COL")
    _fail(run, "mix", "labels", "--budget", "10", "--stage1", "hot", "--out", "o.parquet",
          match=r"expected uniform, proportional, a temperature > 0")
    _fail(run, "mix", "labels", "--budget", "10", "--depth", "4", "--out", "o.parquet", match=r"depth 4 is too deep")
    _fail(run, "mix", "labels", "--budget", "2.5", "--out", "o.parquet", match=r"whole number")
    assert not list(world["dir"].glob("o*")) and not list(world["dir"].glob(".o*"))  # nothing half-written


def test_label_bad_input(run, world):
    np.save(world["dir"] / "wide.npy", np.ones((5, D + 3), np.float32))
    _fail(run, "label", "-m", "model.safetensors", "-o", "labels", "wide.npy",
          match=r"wide\.npy has embeddings of dimension 19, but the model expects d=16")
    (world["dir"] / "broken.npy").write_bytes(b"\x93NUMPY garbage")
    _fail(run, "label", "-m", "model.safetensors", "-o", "labels", "broken.npy",
          match=r"broken\.npy is not a readable \.npy file")
    _fail(run, "label", "-m", "model.safetensors", "-o", "labels", "b.parquet", "--column", "vec",
          match=r"b\.parquet has no column 'vec'")
    _fail(run, "label", "-m", "nomodel.safetensors", "-o", "labels", "a.npy", match=r"no model file at nomodel")
    assert not (world["dir"] / "labels").exists()
    _fail(run, "stats", "a.npy", match=r"a\.npy is not a hermes labels file")


def test_fit_then_info(run, world):
    pytest.importorskip("hermes.train")
    r = run("fit", "a.npy", "b.parquet", "--out", "fitted.safetensors", "--levels", "4,3", "--method", "residual_kmeans",
            "--sample", "150", "--no-progress")
    assert r.output.startswith("fitted residual_kmeans on 150 x 16 embeddings (levels 4,3, metric cos)")
    m = hermes.load(world["dir"] / "fitted.safetensors")
    assert m.levels == (4, 3) and m.d == D
    info = run("info", "fitted.safetensors").output
    assert "levels" in info and "4 x 3" in info and "cuda_available" in info and "file size" in info
    assert "fingerprint" in info
    _fail(run, "fit", "a.npy", "--out", "x.safetensors", "--levels", "4,x", match=r"Invalid value for '--levels'")
    _fail(run, "fit", "a.npy", "--out", "x.safetensors", "--resume", match=r"--resume needs --checkpoint-dir")
    _fail(run, "fit", "a.npy", "--out", "x.safetensors", "--method", "rvq",
          match=r"'rvq' was residual k-means and is now called 'residual_kmeans'.*'plain_rvq'")
    _fail(run, "fit", "a.npy", "--out", "x.safetensors", "--method", "pq",
          match=r"expected one of hermes, plain_rvq, residual_kmeans, got 'pq'")
    assert "hermes|plain_rvq|residual_kmeans" in run("fit", "--help").output
    r = run("fit", "a.npy", "--out", "p.safetensors", "--levels", "4,3", "--method", "plain_rvq", "--epochs", "1",
            "--no-progress")
    assert r.output.startswith("fitted plain_rvq on 120 x 16 embeddings") and hermes.load(world["dir"] / "p.safetensors").W is None


def test_info_without_model(run):
    out = run("info").output
    assert out.startswith("hermes") and hermes.__version__ in out.splitlines()[0]
    assert "cuda_available" in out and "cuda_architectures" in out


def test_cli_end_to_end_on_real_data(run, tmp_path, real_embeddings):
    """A 3,000-row slice of the bundled embeddings through fit (rvq on 1,000 of them) -> label -> stats -> mix."""
    pytest.importorskip("hermes.train")
    np.save(tmp_path / "real.npy", real_embeddings[:3000])
    run("fit", "real.npy", "--out", "m.safetensors", "--levels", "16,8", "--method", "residual_kmeans", "--sample", "1000",
        "--no-progress")
    run("label", "-m", "m.safetensors", "-o", "lab", "real.npy", "--no-progress")
    out = run("stats", "lab", "--embeddings", "real.npy", "--k", "5").output
    l1 = [ln.split() for ln in out.splitlines() if ln.startswith("L1 ")][0]
    assert int(l1[1]) == 16 and float(l1[3]) > 8  # effective buckets: the data spreads over the codebook
    assert 0.3 < float(l1[4]) < 1.0  # centroid cosine of real, clustered embeddings
    run("mix", "lab", "--budget", "500", "--stage1", "proportional", "--out", "s.parquet")
    assert pq.read_table(tmp_path / "s.parquet").num_rows == 500


def test_label_process_uses_jemalloc_with_purging(tmp_path):
    # `hermes label` picks pyarrow's jemalloc pool for its own process (parquet batches reuse freed pages);
    # HERMES_ARROW_POOL=default keeps pyarrow's. Checked in child processes: the pool is process-global.
    try:
        pa.jemalloc_memory_pool()
    except NotImplementedError:
        pytest.skip("this pyarrow has no jemalloc pool")
    code = ("from hermes.cli import _label_arrow_pool; _label_arrow_pool(); import pyarrow as pa; "
            "print(pa.default_memory_pool().backend_name)")
    out = {}
    for mode in ("", "default"):
        env = child_env()
        env["HERMES_ARROW_POOL"] = mode
        out[mode] = subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True,
                                   text=True, cwd=tmp_path).stdout.strip()
    assert out[""] == "jemalloc"
    assert out["default"] == subprocess.run([sys.executable, "-c", "import pyarrow as pa; "
                                             "print(pa.default_memory_pool().backend_name)"],
                                            capture_output=True, text=True, check=True).stdout.strip()
