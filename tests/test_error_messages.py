"""Issue 11, class 4: errors name the right thing.

The function the user called (not an internal one), the row's index in the user's array (not in an internal
batch), what a finite-but-overflowing row is, the user's path (not a temporary file) for OS errors during atomic
writes, and hermes messages (not numpy's or pyarrow's) for seeds, compression names and similar options.
"""
import importlib
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from click.testing import CliRunner

import hermes
from hermes import metrics
from hermes._stream import EmbeddingStream
from hermes.cli import main
from hermes.readers import open_shard, read_embeddings

from conftest import child_env

L = importlib.import_module("hermes.label")
D = 8


def model():
    rng = np.random.default_rng(1)
    return hermes.Model([rng.standard_normal((K, D)).astype(np.float32) for K in (4, 3)])


def test_issue_example_quantization_error_row_17000():
    x = np.random.default_rng(0).standard_normal((20_000, D)).astype(np.float32)
    x[17_000, 2] = np.nan
    with pytest.raises(ValueError, match=r"^quantization_error: x row 17000 contains NaN or Inf$"):
        hermes.quantization_error(x, model())
    x[17_000, 2] = 0
    x[19_999] = 1e20
    with pytest.raises(ValueError, match=r"^quantization_error: x row 19999 is finite but too large for float32"):
        hermes.quantization_error(x, model())


@pytest.mark.parametrize("bs", [1, 7, 64, 1000])
def test_every_batch_size_names_the_same_row(bs):
    x = np.random.default_rng(0).standard_normal((300, D)).astype(np.float32)
    x[222, 0] = np.inf
    for fn, call in [("assign_codes", lambda: hermes.assign_codes(x, model(), batch_size=bs)),
                     ("transform", lambda: hermes.transform(x, model(), batch_size=bs)),
                     ("quantization_error", lambda: hermes.quantization_error(x, model(), batch_size=bs))]:
        with pytest.raises(ValueError, match=rf"^{fn}: x row 222 contains NaN or Inf$"):
            call()


def test_overflowing_finite_row_is_not_called_nan():
    x = np.ones((5, D), np.float32)
    x[3] = 3e19  # norm 8.5e19: finite, but its square is not
    for call in (lambda: hermes.assign_codes(x, model()), lambda: hermes.fit(x, (2,), method="residual_kmeans", progress=False),
                 lambda: hermes.kmeans(x, 2)):
        with pytest.raises(ValueError) as e:
            call()
        assert "row 3 is finite but too large for float32" in str(e.value) and "NaN" not in str(e.value)
    x[3] = 1e18  # norm 2.8e18: its square fits float32: labeled like any row of that direction
    np.testing.assert_array_equal(hermes.assign_codes(x, model())[3], hermes.assign_codes(np.ones((1, D), np.float32),
                                                                                          model())[0])


# ------------------------------------------------------------------------------------- OS errors
def test_atomic_outputs_name_the_users_path(tmp_path):
    (tmp_path / "adir").mkdir()
    (tmp_path / "afile").write_text("x")
    m = model()
    for target in [tmp_path / "adir", tmp_path / "afile" / "m.safetensors"]:
        with pytest.raises(OSError) as e:
            m.save(target)
        assert str(target) in str(e.value) and ".tmp" not in str(e.value), str(e.value)
    np.save(tmp_path / "x.npy", np.zeros((4, D), np.float32))
    with pytest.raises((OSError, ValueError)) as e:
        hermes.label(tmp_path / "x.npy", m, tmp_path / "afile" / "out", progress=False)
    assert str(tmp_path / "afile") in str(e.value) and ".tmp" not in str(e.value)
    assert sorted(os.listdir(tmp_path)) == ["adir", "afile", "x.npy"]


def test_a_full_disk_names_the_users_path(tmp_path):
    """A write that fails midway (file size limit: EFBIG, as a full disk gives ENOSPC) names the target."""
    code = textwrap.dedent(f"""
        import resource, signal, numpy as np, hermes
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        m = hermes.Model([np.ones((4096, 64), np.float32)])
        resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, resource.RLIM_INFINITY))
        try:
            m.save({str(tmp_path / 'big.safetensors')!r})
        except OSError as e:
            print("ERR", e)
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=child_env(), timeout=120,
                       cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("ERR could not write " + str(tmp_path / "big.safetensors")), r.stdout
    assert ".tmp" not in r.stdout and os.listdir(tmp_path) == []


# ------------------------------------------------------------------------------ options at the boundary
BAD_SEEDS = [-1, 1.5, "7", True, None]


@pytest.mark.parametrize("seed", BAD_SEEDS)
def test_seeds_checked_with_hermes_messages(tmp_path, seed):
    x = np.random.default_rng(0).standard_normal((40, D)).astype(np.float32)
    ids = np.arange(40) % 3
    codes = np.stack([ids, ids], 1)
    np.save(tmp_path / "x.npy", x)
    calls = {
        "fit": lambda: hermes.fit(x, (3,), method="residual_kmeans", seed=seed, progress=False),
        "kmeans": lambda: hermes.kmeans(x, 3, seed=seed),
        "sample": lambda: hermes.mix.sample(codes, 5, levels=(3, 3), seed=seed),
        "read_embeddings": lambda: read_embeddings(tmp_path / "x.npy", sample=5, seed=seed),
        "recall_at_k": lambda: metrics.recall_at_k(x, ids, 3, seed=seed),
        "report": lambda: metrics.report(x, codes, (3, 3), seed=seed),
        "report_streaming": lambda: metrics.report_streaming(
            EmbeddingStream([open_shard(tmp_path / "x.npy")]), codes, (3, 3), seed=seed),
    }
    for fn, call in calls.items():
        with pytest.raises((ValueError, TypeError), match=rf"^{fn}: seed must be"):
            call()


@pytest.mark.parametrize("cmd", [["fit", "x.npy", "--out", "m.safetensors"], ["mix", "lab", "--budget", "5",
                                                                            "--out", "s.parquet"],
                                 ["stats", "lab"]])
def test_cli_seed_option(tmp_path, monkeypatch, cmd):
    monkeypatch.chdir(tmp_path)
    np.save("x.npy", np.random.default_rng(0).standard_normal((40, D)).astype(np.float32))
    hermes.label("x.npy", model(), "lab", progress=False)
    r = CliRunner().invoke(main, cmd + ["--seed", "-1"])
    assert r.exit_code == 2 and "--seed" in r.output and "-1" in r.output, r.output


@pytest.mark.parametrize("compression", ["bogus", 5, None, "", "ZSTD "])
def test_label_compression_checked_before_anything_is_written(tmp_path, compression):
    np.save(tmp_path / "x.npy", np.zeros((4, D), np.float32))
    with pytest.raises(ValueError, match=r"^label: compression must be one of zstd, snappy"):
        hermes.label(tmp_path / "x.npy", model(), tmp_path / "out", compression=compression, progress=False)
    assert not (tmp_path / "out").exists()
    rep = hermes.label(tmp_path / "x.npy", model(), tmp_path / "out", compression="GZIP", progress=False)
    assert rep.labeled == ["x.parquet"]
    import pyarrow.parquet as pq

    assert pq.ParquetFile(tmp_path / "out" / "x.parquet").metadata.row_group(0).column(0).compression == "GZIP"


def test_json_manifest_error_names_the_file(tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((4, D), np.float32))
    hermes.label(tmp_path / "x.npy", model(), tmp_path / "out", progress=False)
    (tmp_path / "out" / "manifest.json").write_text(json.dumps({"format": "hermes-labels", "shards": [{}]}))
    with pytest.raises(ValueError, match=r"^read_labels: .*out/manifest\.json is not a valid hermes manifest"):
        L.read_labels(tmp_path / "out")


@pytest.mark.parametrize("sample", [None, 70])
def test_fit_cli_names_the_input_file_and_row(tmp_path, monkeypatch, sample):
    """fit sees one array (the inputs one after another, or a sample of them); the error names file and row."""
    from hermes.readers import sample_rows

    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(0)
    np.save("a.npy", rng.standard_normal((40, D)).astype(np.float32))
    b = rng.standard_normal((40, D)).astype(np.float32)
    bad = 33
    if sample is not None:
        assert 40 + bad in sample_rows(80, sample, 0)  # the sample holds the bad row
    b[bad, 1] = np.nan
    np.save("b.npy", b)
    args = ["fit", "a.npy", "b.npy", "--out", "m.safetensors", "--method", "residual_kmeans", "--levels", "3", "--no-progress"]
    r = CliRunner().invoke(main, args + (["--sample", str(sample)] if sample else []))
    assert r.exit_code == 1 and f"Error: hermes fit: b.npy row {bad} contains NaN or Inf" in r.output, r.output
    assert not (tmp_path / "m.safetensors").exists()
