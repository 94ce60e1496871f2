"""Issue 11, class 2: the labels directory never lies.

The manifest lists exactly the labels files the directory holds, each described by its own metadata; every
labels file was made by the model the manifest records, from the input it names (identified by a content
fingerprint, not by the file name). A rerun with another model, or with a different input of the same name,
refuses or relabels; it never reports "already done" for a different file.
"""
import hashlib
import importlib
import json
import os
import shutil
import warnings

import blake3
import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

import hermes
from hermes.cli import main

L = importlib.import_module("hermes.label")  # the module (hermes.label is also the function)

D = 8
LEVELS = (5, 3)


def model(seed=0):
    rng = np.random.default_rng(seed)
    return hermes.Model([rng.standard_normal((K, D)).astype(np.float32) for K in LEVELS])


def emb(n, seed):
    return np.random.default_rng(100 + seed).standard_normal((n, D)).astype(np.float32)


def codes_of(path):
    t = pq.read_table(path)
    return np.stack([t.column(f"c{l + 1}").to_numpy() for l in range(len(LEVELS))], 1).astype(np.int32)


def manifest(out):
    return json.loads((out / "manifest.json").read_text())


def assert_honest(out, m):
    """The manifest lists every labels file in out, as its metadata says, and each holds m's codes of the source."""
    man = manifest(out)
    files = sorted(p.name for p in out.glob("*.parquet"))
    assert sorted(e["output"] for e in man["shards"]) == files
    assert man["rows"] == sum(e["rows"] for e in man["shards"])
    assert man["model"]["fingerprint"] == L.model_fingerprint(m)
    for e in man["shards"]:
        meta = json.loads(pq.read_schema(out / e["output"]).metadata[b"hermes"])
        assert (meta["source"], meta["source_fingerprint"], meta["rows"]) == (e["source"], e["source_fingerprint"],
                                                                              e["rows"])
        src = np.load(e["source"])
        np.testing.assert_array_equal(codes_of(out / e["output"]), hermes.assign_codes(src, m))
        with open(e["source"], "rb") as f:
            data = f.read()
        assert e["source_fingerprint"] in ("b3-" + blake3.blake3(data).hexdigest()[:32],
                                           hashlib.sha256(data).hexdigest()[:32])  # the latter: older outputs
    L.read_labels(out)  # and the reader accepts it


@pytest.fixture
def tree(tmp_path):
    (tmp_path / "data" / "alt").mkdir(parents=True)
    np.save(tmp_path / "data" / "a.npy", emb(30, 0))
    np.save(tmp_path / "data" / "alt" / "a.npy", emb(30, 1))  # same name, same rows, other content
    np.save(tmp_path / "data" / "b.npy", emb(20, 2))
    return tmp_path


def test_same_name_other_input_is_refused_never_already_done(tree):
    out, m = tree / "o", model()
    L.label(tree / "data" / "a.npy", m, out, progress=False)
    before = (out / "a.parquet").read_bytes(), (out / "manifest.json").read_bytes()
    with pytest.raises(ValueError, match=r"a\.parquet holds the labels of another input with the same name: .*"
                                         r"data/a\.npy .*not .*data/alt/a\.npy"):
        L.label(tree / "data" / "alt" / "a.npy", m, out, progress=False)
    assert ((out / "a.parquet").read_bytes(), (out / "manifest.json").read_bytes()) == before
    assert_honest(out, m)
    rep = L.label(tree / "data" / "alt" / "a.npy", m, out, progress=False, overwrite=True)  # relabel on request
    assert rep.labeled == ["a.parquet"] and rep.skipped == []
    assert manifest(out)["shards"][0]["source"] == str((tree / "data" / "alt" / "a.npy").resolve())
    assert_honest(out, m)


def test_cli_issue_example(tree, monkeypatch):
    monkeypatch.chdir(tree)
    m = model()
    m.save("m.safetensors")
    r = CliRunner().invoke(main, ["label", "--model", "m.safetensors", "--out", "o", "data/a.npy", "--no-progress"])
    assert r.exit_code == 0 and "0 already done" in r.output, r.output
    r = CliRunner().invoke(main, ["label", "--model", "m.safetensors", "--out", "o", "data/alt/a.npy",
                                  "--no-progress"])
    assert r.exit_code == 1 and "already done" not in r.output and "another input with the same name" in r.output
    assert_honest(tree / "o", m)


def test_rewritten_source_with_the_same_row_count_is_relabeled(tree):
    out, m = tree / "o", model()
    src = tree / "data" / "a.npy"
    L.label(src, m, out, progress=False)
    np.save(src, emb(30, 7))  # same path, same rows, new content
    with pytest.warns(UserWarning, match="stale"):
        rep = L.label(src, m, out, progress=False)
    assert rep.labeled == ["a.parquet"] and rep.skipped == []
    assert_honest(out, m)


def test_identical_content_is_recognized_wherever_it_lives(tree):
    out, m = tree / "o", model()
    L.label(tree / "data" / "a.npy", m, out, progress=False)
    (tree / "copy").mkdir()
    shutil.copy(tree / "data" / "a.npy", tree / "copy" / "a.npy")  # new path, new mtime, same bytes
    rep = L.label(tree / "copy" / "a.npy", m, out, progress=False)
    assert rep.skipped == ["a.parquet"] and rep.labeled == []
    assert_honest(out, m)  # the manifest describes the file: its source is the original path
    os.utime(tree / "data" / "a.npy", ns=(1, 1))  # touched, unchanged: rehashed, still done
    assert L.label(tree / "data" / "a.npy", m, out, progress=False).skipped == ["a.parquet"]


def test_other_model_is_refused_or_relabels(tree):
    out = tree / "o"
    L.label([tree / "data" / "a.npy", tree / "data" / "b.npy"], model(0), out, progress=False)
    with pytest.raises(ValueError, match="labeled by another model"):
        L.label([tree / "data" / "a.npy", tree / "data" / "b.npy"], model(1), out, progress=False)
    assert_honest(out, model(0))
    # relabeling only a.npy with the new model would leave b.parquet from the old one: refused
    with pytest.raises(ValueError, match=r"already holds b\.parquet, labeled by another model"):
        L.label(tree / "data" / "a.npy", model(1), out, progress=False, overwrite=True)
    assert_honest(out, model(0))
    rep = L.label([tree / "data" / "a.npy", tree / "data" / "b.npy"], model(1), out, progress=False, overwrite=True)
    assert sorted(rep.labeled) == ["a.parquet", "b.parquet"]
    assert_honest(out, model(1))


def test_manifest_lists_every_labels_file_after_a_killed_run(tree, monkeypatch):
    out, m = tree / "o", model()
    L.label(tree / "data" / "a.npy", m, out, progress=False)

    def kill(source, rows):
        raise KeyboardInterrupt("simulated kill")

    np.save(tree / "data" / "c.npy", emb(10, 3))
    monkeypatch.setattr(L, "_on_batch_written", lambda s, r: kill(s, r) if s.endswith("c.npy") else None)
    with pytest.raises(KeyboardInterrupt):  # b completes, c is killed: b is on disk but not in the manifest yet
        L.label([tree / "data" / "b.npy", tree / "data" / "c.npy"], m, out, progress=False, batch_size=4)
    monkeypatch.setattr(L, "_on_batch_written", lambda s, r: None)
    assert sorted(p.name for p in out.glob("*.parquet")) == ["a.parquet", "b.parquet"]
    (tree / "data" / "d.npy").write_bytes(open(tree / "data" / "b.npy", "rb").read())
    L.label(tree / "data" / "d.npy", m, out, progress=False)  # another run: its manifest lists a, b and d
    assert [e["output"] for e in manifest(out)["shards"]] == ["a.parquet", "b.parquet", "d.parquet"]
    assert_honest(out, m)


def test_reader_refuses_a_manifest_that_lies(tree):
    out, m = tree / "o", model()
    L.label([tree / "data" / "a.npy", tree / "data" / "b.npy"], m, out, progress=False)
    good = (out / "manifest.json").read_text()
    for edit in [lambda d: d["shards"][0].update(rows=31),
                 lambda d: d["shards"][0].update(source=str(tree / "data" / "alt" / "a.npy")),
                 lambda d: d["shards"][1].update(source_fingerprint="0" * 32),
                 lambda d: d["shards"][0].update(output="b.parquet")]:
        doc = json.loads(good)
        edit(doc)
        (out / "manifest.json").write_text(json.dumps(doc))
        with pytest.raises(ValueError, match="the manifest of .* says"):
            L.read_labels(out)
    for doc in [dict(json.loads(good), format="other"),
                dict(json.loads(good), shards=[{**json.loads(good)["shards"][0], "output": "../a.parquet"}])]:
        (out / "manifest.json").write_text(json.dumps(doc))
        with pytest.raises(ValueError, match="is not a valid hermes manifest"):
            L.read_labels(out)
    # a labels file swapped for another one of the same model is caught too
    (out / "manifest.json").write_text(good)
    shutil.copy(out / "b.parquet", out / "a.parquet")
    with pytest.raises(ValueError, match="the manifest of .* says a.parquet holds 30 rows"):
        L.read_labels(out)
    with pytest.raises(ValueError, match="another input with the same name"):
        L.label(tree / "data" / "a.npy", m, out, progress=False)


def test_labels_without_a_source_fingerprint_are_relabeled(tree):
    """Outputs of an older hermes (no content fingerprint) are never trusted as done."""
    out, m = tree / "o", model()
    L.label(tree / "data" / "a.npy", m, out, progress=False)
    t = pq.read_table(out / "a.parquet")
    meta = json.loads(t.schema.metadata[b"hermes"])
    del meta["source_fingerprint"]
    pq.write_table(t.replace_schema_metadata({"hermes": json.dumps(meta)}), out / "a.parquet")
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        rep = L.label(tree / "data" / "a.npy", m, out, progress=False)
    assert rep.labeled == ["a.parquet"] and any("stale" in str(x.message) for x in w)
    assert_honest(out, m)


def test_outputs_fingerprinted_with_sha256_are_still_recognized(tree):
    """hermes before BLAKE3 recorded SHA-256 fingerprints: a rerun compares with SHA-256 and skips the finished
    output even after the source's stat changed (touched, copied back), and relabels it when the content did."""
    out, m = tree / "o", model()
    src = tree / "data" / "a.npy"
    L.label(src, m, out, progress=False)
    t = pq.read_table(out / "a.parquet")
    meta = json.loads(t.schema.metadata[b"hermes"])
    assert meta["source_fingerprint"].startswith("b3-")
    meta["source_fingerprint"] = hashlib.sha256(src.read_bytes()).hexdigest()[:32]  # as an older hermes wrote it
    pq.write_table(t.replace_schema_metadata({"hermes": json.dumps(meta)}), out / "a.parquet")
    os.utime(src, ns=(0, 12345))  # the stat no longer matches: the content decides
    rep = L.label(src, m, out, progress=False)
    assert rep.skipped == ["a.parquet"] and rep.labeled == []
    np.save(src, emb(30, 7))  # new content: relabeled (recorded with SHA-256, the hash it was compared with)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        rep = L.label(src, m, out, progress=False)
    assert rep.labeled == ["a.parquet"] and any("stale" in str(x.message) for x in w)
    assert manifest(out)["shards"][0]["source_fingerprint"] == hashlib.sha256(src.read_bytes()).hexdigest()[:32]
    assert_honest(out, m)
