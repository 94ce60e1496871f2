"""Issue 11, class 3: non-finite data never becomes a number.

Every metric and reader of embeddings, with a NaN, +Inf, -Inf or float32-overflowing row at the first, a middle
and the last position, with N spanning several internal batches: NaN/Inf raise naming the row (in the user's
array, or the shard file and its row); a finite row whose norm overflows float32 is either handled exactly (the
metrics normalize it correctly) or refused with a message saying what it is (the float32 kernels and fit).
"""
import importlib

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from safetensors.numpy import save_file

import hermes
from hermes import metrics
from hermes._stream import EmbeddingStream
from hermes.cli import main
from hermes.readers import open_shard

L = importlib.import_module("hermes.label")

D = 8
N = 103  # batches of 32 below: rows 0, 51 and 102 sit in the first, a middle and the last (partial) batch
ROWS = [0, 51, N - 1]
BAD = {"nan": np.nan, "inf": np.inf, "-inf": -np.inf}
BIG = 1e25  # finite in float32, but the squared norm of a row of them is not


def data(seed=0):
    return np.random.default_rng(seed).standard_normal((N, D)).astype(np.float32)


def poisoned(row, value):
    x = data()
    x[row, 3] = value
    return x


def model():
    rng = np.random.default_rng(1)
    return hermes.Model([rng.standard_normal((K, D)).astype(np.float32) for K in (4, 3)])


IDS = np.arange(N) % 5
CODES = np.stack([IDS, np.arange(N) % 3], 1)


# ------------------------------------------------------------------------------------------- metrics
METRICS = {
    "centroid_cosine": (lambda x: metrics.centroid_cosine(x, IDS, chunk_bytes=32 * D * 8), "centroid_cosine"),
    "recall_at_k": (lambda x: metrics.recall_at_k(x, IDS, 3, batch=32), "recall_at_k"),
    "recall_at_k sampled": (lambda x: metrics.recall_at_k(x, IDS, 3, exact_max=10, sample=20, batch=7),
                            "recall_at_k"),
    "report": (lambda x: metrics.report(x, CODES, (5, 3), k=3, batch=32), "report"),
    "report no knn": (lambda x: metrics.report(x, CODES, (5, 3), k=None), "report"),
}


@pytest.mark.parametrize("kind", list(BAD))
@pytest.mark.parametrize("row", ROWS)
@pytest.mark.parametrize("name", list(METRICS))
@pytest.mark.parametrize("as_torch", [False, True])
def test_metrics_raise_naming_the_row(name, row, kind, as_torch):
    f, fn = METRICS[name]
    x = poisoned(row, BAD[kind])
    if as_torch:
        import torch

        x = torch.from_numpy(x)
    with pytest.raises(ValueError, match=rf"^{fn}: x row {row} contains NaN or Inf$"):
        f(x)


@pytest.mark.parametrize("row", ROWS)
@pytest.mark.parametrize("name", list(METRICS))
@pytest.mark.parametrize("dtype,big", [(np.float32, BIG), (np.float64, 1e300)])
def test_metrics_normalize_huge_finite_rows_exactly(name, row, dtype, big):
    """A row of huge finite values has the direction of the same row scaled down: the metrics agree."""
    f, _ = METRICS[name]
    small = data().astype(dtype)
    huge = small.copy()
    huge[row] *= dtype(big)
    assert np.isfinite(huge).all()
    a, b = f(huge), f(small)
    if isinstance(a, list):
        a = [r.get("centroid_cosine") for r in a] + [r.get("recall_at_k") for r in a]
        b = [r.get("centroid_cosine") for r in b] + [r.get("recall_at_k") for r in b]
    np.testing.assert_allclose(np.array(a, float), np.array(b, float), rtol=1e-6)


@pytest.mark.parametrize("kind", list(BAD))
@pytest.mark.parametrize("row", ROWS)
def test_class_labels_nan_or_inf_refused(row, kind):
    labels = np.arange(N, dtype=np.float64) % 4
    labels[row] = BAD[kind]
    for f in (metrics.nmi, metrics.purity):
        with pytest.raises(ValueError, match=rf"labels row {row} is"):
            f(labels, IDS)
    with pytest.raises(ValueError, match=rf"^report: labels row {row} is"):
        metrics.report(None, CODES, (5, 3), labels=labels)


# ------------------------------------------------------------------------------- streaming and CLI
def write_shards(tmp_path, x, kind):
    """x split into two shards of the given kind (rows 0..63 and 64..N-1)."""
    paths = []
    for i, part in enumerate([x[:64], x[64:]]):
        p = tmp_path / f"s{i}.{kind}"
        if kind == "npy":
            np.save(p, part)
        elif kind == "parquet":
            pq.write_table(pa.table({"embedding": pa.array(list(part), pa.list_(pa.float32()))}), p)
        else:
            save_file({"e": part}, str(p))
        paths.append(p)
    return paths


@pytest.mark.parametrize("kind", ["npy", "parquet", "safetensors"])
@pytest.mark.parametrize("row", ROWS)
@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_report_streaming_names_shard_and_row(tmp_path, kind, row, value):
    paths = write_shards(tmp_path, poisoned(row, BAD[value]), kind)
    stream = EmbeddingStream([open_shard(p) for p in paths])
    shard, local = (paths[0], row) if row < 64 else (paths[1], row - 64)
    with pytest.raises(ValueError, match=rf"{shard.name} row {local} contains NaN or Inf \(row {row} of"):
        metrics.report_streaming(stream, CODES, (5, 3), k=3, block=16)


@pytest.mark.parametrize("row", ROWS)
def test_report_streaming_handles_huge_finite_rows(tmp_path, row):
    x = data()
    huge = x.copy()
    huge[row] *= np.float32(BIG)
    a = metrics.report_streaming(EmbeddingStream([open_shard(p) for p in write_shards(tmp_path, huge, "npy")]),
                                 CODES, (5, 3), k=3, block=16)[0]
    (tmp_path / "b").mkdir()
    b = metrics.report_streaming(EmbeddingStream([open_shard(p) for p in write_shards(tmp_path / "b", x, "npy")]),
                                 CODES, (5, 3), k=3, block=16)[0]
    for ra, rb in zip(a, b):
        assert ra["centroid_cosine"] == pytest.approx(rb["centroid_cosine"], rel=1e-6)
        assert ra["recall_at_k"] == rb["recall_at_k"]


@pytest.mark.parametrize("row", ROWS)
def test_stats_cli_embeddings(tmp_path, monkeypatch, row):
    monkeypatch.chdir(tmp_path)
    m = model()
    np.save("clean.npy", data())
    hermes.label("clean.npy", m, "lab", progress=False)
    np.save("bad.npy", poisoned(row, np.nan))
    r = CliRunner().invoke(main, ["stats", "lab", "--embeddings", "bad.npy", "--no-progress"])
    assert r.exit_code == 1 and f"Error: hermes stats: bad.npy row {row} contains NaN or Inf" in r.output, r.output


# ----------------------------------------------------------------------------- kernels and labeling
@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "big"])
@pytest.mark.parametrize("row", ROWS)
def test_assign_transform_quantization_error_name_the_users_row(row, value):
    x = poisoned(row, BIG if value == "big" else BAD[value])
    if value == "big":
        x[row] = BIG
    what = "is finite but too large for float32" if value == "big" else "contains NaN or Inf"
    m = model()
    for fn, call in [("assign_codes", lambda: hermes.assign_codes(x, m, batch_size=32)),
                     ("transform", lambda: hermes.transform(x, m, batch_size=32)),
                     ("quantization_error", lambda: hermes.quantization_error(x, m, batch_size=32))]:
        with pytest.raises(ValueError, match=rf"^{fn}: x row {row} {what}"):
            call()


@pytest.mark.parametrize("kind", ["npy", "parquet", "safetensors"])
@pytest.mark.parametrize("value", ["nan", "inf", "big"])
@pytest.mark.parametrize("row", ROWS)
def test_label_names_the_shard_row(tmp_path, kind, row, value):
    x = poisoned(row, BIG if value == "big" else BAD[value])
    if value == "big":
        x[row] = BIG
    paths = write_shards(tmp_path, x, kind)
    shard, local = (paths[0], row) if row < 64 else (paths[1], row - 64)
    what = "is finite but too large for float32" if value == "big" else "contains NaN or Inf"
    with pytest.raises(ValueError, match=rf"^label: .*{shard.name}: row {local} {what}"):
        hermes.label(paths, model(), tmp_path / "out", batch_size=16, progress=False)
    assert sorted(p.name for p in (tmp_path / "out").glob("*.parquet")) == ([] if row < 64 else ["s0.parquet"])


# ---------------------------------------------------------------------------------------------- fit
@pytest.mark.parametrize("value", ["nan", "inf", "big"])
@pytest.mark.parametrize("row", ROWS)
def test_fit_rvq_checks_rows_outside_its_kmeans_sample(row, value):
    x = poisoned(row, BIG if value == "big" else BAD[value])
    if value == "big":
        x[row] = BIG
    what = "is finite but too large for float32" if value == "big" else "contains NaN or Inf"
    for kw in [dict(method="residual_kmeans", max_points_per_centroid=4), dict(method="residual_kmeans"),
               dict(method="hermes", epochs=0)]:
        with pytest.raises(ValueError, match=rf"^fit: x row {row} {what}"):
            hermes.fit(x, (4, 3), progress=False, **kw)
    with pytest.raises(ValueError, match=rf"^kmeans: x row {row} {what}"):
        hermes.kmeans(x, 4)


def test_fit_rvq_sample_really_skips_the_row():
    """The case the check exists for: with a 16-row k-means sample, most rows are never read by k-means."""
    x = poisoned(N - 1, np.nan)
    with pytest.raises(ValueError, match=rf"x row {N - 1} contains NaN"):
        hermes.fit(x, (4, 3), method="residual_kmeans", max_points_per_centroid=4, progress=False)
    clean = data()
    m = hermes.fit(clean, (4, 3), method="residual_kmeans", max_points_per_centroid=4, progress=False)
    assert m.train_stats["rows_used"] == 16 < N


@pytest.mark.parametrize("row", ROWS)
def test_mix_quality_and_tokens(row):
    q = np.random.default_rng(0).random(N)
    q[row] = np.nan
    with pytest.raises(ValueError, match=rf"quality must be finite; row {row} is nan"):
        hermes.mix.sample(CODES, 10, levels=(5, 3), stage2="quality", quality=q)
    t = np.ones(N)
    t[row] = np.inf
    with pytest.raises(ValueError, match=rf"tokens must be finite; row {row} is inf"):
        hermes.mix.sample(CODES, 10, levels=(5, 3), tokens=t)
