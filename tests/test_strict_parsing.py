"""Issue 11, class 5: files hermes reads are parsed strictly.

Model files: every metadata value malformed in turn (a boolean is exactly ``true`` or ``false``; integers are
written in digits; levels are a JSON list of integers), missing keys, unexpected or non-float tensors. Stage-1
weights files (.json, .csv) and mappings: two keys naming the same bucket are an error, not a silent override;
weights are numbers. Every error names the file and the key (or line).
"""
import json

import numpy as np
import pytest
from click.testing import CliRunner
from safetensors import safe_open
from safetensors.numpy import save_file

import hermes
from hermes.cli import main
from hermes.mix import stage1_weights

D = 6


@pytest.fixture
def saved(tmp_path):
    rng = np.random.default_rng(0)
    m = hermes.Model([rng.standard_normal((K, D)).astype(np.float32) for K in (4, 3)],
                     W=np.eye(D, dtype=np.float32), b=np.zeros(D, np.float32))
    m.save(tmp_path / "m.safetensors")
    with safe_open(str(tmp_path / "m.safetensors"), "numpy") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    return tmp_path, meta, tensors


MALFORMED = {
    "normalize": ["1", "0", "True", "FALSE", '"true"', "yes", "", " true", "true ", "null", "[]", "2.5"],
    "d": ["6.0", " 6", "6 ", "-6", "0", "06", "+6", "six", "", "1e1", "٦"],
    "levels": ["[4, 3.0]", "[4, true]", "[4.5, 3]", '{"a": 4}', "4,3", "[]", "[4, -3]", "[4, 0]", '["4", 3]',
               "[4, 3", "null", "[4, 70000]", "[1, 1, 1, 1, 1, 1, 1, 1, 1]"],
    "metric": ["COS", "cosine", "", " cos", "L2"],
    "ortho_tol": ["nan", "inf", "-1", "", "1e-4x", "0x1", "1_0"],
    "format_version": ["1.0", "2", "", " 1", "01"],
    "format": ["hermes", "", "HERMES-MODEL"],
}


@pytest.mark.parametrize("key,value", [(k, v) for k, vs in MALFORMED.items() for v in vs])
def test_model_metadata_malformed(saved, key, value):
    tmp, meta, tensors = saved
    save_file(tensors, str(tmp / "bad.safetensors"), metadata={**meta, key: value})
    with pytest.raises(ValueError) as e:
        hermes.load(tmp / "bad.safetensors")
    msg = str(e.value)
    assert msg.startswith(f"hermes.load: {tmp / 'bad.safetensors'}"), msg
    assert key in msg or (key == "format" and "not a hermes model"), msg


@pytest.mark.parametrize("key", ["d", "levels", "metric", "normalize", "format", "format_version"])
def test_model_metadata_missing(saved, key):
    tmp, meta, tensors = saved
    save_file(tensors, str(tmp / "bad.safetensors"), metadata={k: v for k, v in meta.items() if k != key})
    with pytest.raises(ValueError, match=rf"hermes\.load: .*bad\.safetensors.*{key}"):
        hermes.load(tmp / "bad.safetensors")


def test_model_metadata_accepted_spellings(saved):
    tmp, meta, tensors = saved
    save_file(tensors, str(tmp / "ok.safetensors"), metadata={**meta, "normalize": "false"})
    assert hermes.load(tmp / "ok.safetensors").normalize is False
    save_file(tensors, str(tmp / "ok.safetensors"), metadata={k: v for k, v in meta.items() if k != "ortho_tol"})
    assert hermes.load(tmp / "ok.safetensors").ortho_tol == 1e-4
    save_file(tensors, str(tmp / "ok.safetensors"), metadata={**meta, "ortho_tol": "0"})
    assert hermes.load(tmp / "ok.safetensors").ortho_tol == 0.0


@pytest.mark.parametrize("change,match", [
    (lambda t: t.update({"extra": np.zeros(2, np.float32)}), r"holds tensor\(s\) \['extra'\]"),
    (lambda t: t.update({"codebook.00": t["codebook.0"]}), r"\['codebook\.00'\]"),
    (lambda t: t.update({"codebook.2": t["codebook.0"]}), r"\['codebook\.2'\]"),
    (lambda t: t.update({"codebook.-1": t["codebook.0"]}), r"\['codebook\.-1'\]"),
    (lambda t: t.update({"codebook.0": t["codebook.0"].astype(np.int32)}), r"'codebook\.0' has dtype int32"),
    (lambda t: t.update({"W": t["W"].astype(np.int64)}), r"'W' has dtype int64"),
    (lambda t: t.pop("codebook.1"), r"missing tensor 'codebook\.1'"),
    (lambda t: t.update({"codebook.1": t["codebook.1"][:2]}), r"'codebook\.1' has shape \(2, 6\), metadata says"),
    (lambda t: t.update({"W": t["W"][:3]}), r"'W' has shape \(3, 6\)"),
    (lambda t: t.update({"b": np.zeros(5, np.float32)}), r"'b' has shape \(5,\)"),
    (lambda t: t["codebook.1"].__setitem__((2, 1), np.nan), r"codebooks\[1\] contains NaN or Inf"),
    (lambda t: t["b"].__setitem__(0, np.inf), r"b contains NaN or Inf"),
])
def test_model_tensors_malformed(saved, change, match):
    tmp, meta, tensors = saved
    tensors = {k: v.copy() for k, v in tensors.items()}
    change(tensors)
    save_file(tensors, str(tmp / "bad.safetensors"), metadata=meta)
    with pytest.raises(ValueError, match=rf"^hermes\.load: .*bad\.safetensors.*{match}"):
        hermes.load(tmp / "bad.safetensors")


def test_not_a_safetensors_file(tmp_path):
    for name, data in [("empty.safetensors", b""), ("junk.safetensors", b"\x10\x00\x00\x00\x00\x00\x00\x00{bad json}!!"),
                       ("npy.safetensors", b"\x93NUMPY\x01\x00")]:
        (tmp_path / name).write_bytes(data)
        with pytest.raises(ValueError, match=rf"^hermes\.load: .*{name} is not a readable safetensors file"):
            hermes.load(tmp_path / name)


# ------------------------------------------------------------------------------------- stage-1 weights
CODES = np.stack([np.arange(50) % 5, np.arange(50) % 2], 1)
ALL = {str(b): 1 for b in range(5)}


def weights_file(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text)
    return str(p)


@pytest.mark.parametrize("text,match", [
    ('{"0": 1, "1": 0.5, "1": 0.2, "2": 1, "3": 1, "4": 1}', r"gives key '1' twice \(values 0\.5 and 0\.2\)"),
    ('{"0": 1, "1": 0.5, "01": 0.2, "2": 1, "3": 1, "4": 1}', r"key '1' and key '01' both name bucket 1"),
    ('{"0": 1, "1": 0.5, "001": 0.2, "2": 1, "3": 1, "4": 1}', r"both name bucket 1"),
    ('{"0": 1, "1": "0.5", "2": 1, "3": 1, "4": 1}', r"key '1' has the weight \"0\.5\"; weights are JSON numbers"),
    ('{"0": 1, "1": true, "2": 1, "3": 1, "4": 1}', r"key '1' has the weight true"),
    ('{"0": 1, "1": null, "2": 1, "3": 1, "4": 1}', r"key '1' has the weight null"),
    ('{"0": 1, "1": [1], "2": 1, "3": 1, "4": 1}', r"key '1' has the weight \[1\]"),
    ('{"0": 1, "1": NaN, "2": 1, "3": 1, "4": 1}', r"finite and >= 0; bucket 1 has nan"),
    ('{"0": 1, "1": -2, "2": 1, "3": 1, "4": 1}', r"finite and >= 0; bucket 1 has -2"),
    ('{"0": 1, "+1": 1, "2": 1, "3": 1, "4": 1}', r"not occupied L1 buckets, e\.g\. \['\+1'\]"),
    ('{"0": 1, "1.0": 1, "2": 1}', r"\['1\.0'\]"),
    ('{"0": 1, "1_0": 1, "2": 1}', r"\['1_0'\]"),
    ('{"0": 1, " 1": 1, "2": 1}', r"\[' 1'\]"),
    ('{"0": 1, "\\u0661": 1}', r"\['\u0661'\]"),
    ('{"0": 1, "-0": 1}', r"\['-0'\]"),
    ("[1, 2]", r"must hold a JSON object"),
    ('{"0": 1,', r"is not valid JSON"),
])
def test_json_weights(tmp_path, text, match):
    path = weights_file(tmp_path, "w.json", text)
    with pytest.raises(ValueError, match=rf"stage1_weights: stage1 file '.*w\.json'.*{match}"):
        stage1_weights(CODES, (5, 2), path)


@pytest.mark.parametrize("text,match", [
    ("bucket,weight\n0,1\n1,0.5\n1,0.2\n2,1\n", r"line 3 and line 4 both name bucket 1"),
    ("bucket,weight\n0,1\n1,0.5\n01,0.2\n2,1\n", r"line 3 and line 4 both name bucket 1"),
    ("bucket,weight\n0,1\n 1 ,0.5\n1,0.2\n", r"line 3 and line 4 both name bucket 1"),
    ("bucket,weight\n0,1\n1\n", r"line 3 has fewer fields than the header"),
    ("bucket,weight\n0,1\n1,2,3\n", r"line 3 has more fields than the header"),
    ("bucket,weight\n0,1\n1,abc\n", r"line 3: weight 'abc' is not a number"),
    ("bucket,weight\n0,1\n1,1_0\n", r"line 3: weight '1_0' is not a number"),
    ("bucket,weight\n0,1\n1,0x10\n", r"line 3: weight '0x10' is not a number"),
    ("bucket,weight\n0,1\n1,\n", r"line 3: weight '' is not a number"),
    ("bucket,weight\n0,1\n1,inf\n", r"finite and >= 0; bucket 1 has inf"),
    ("bucket,weight\n0,1\nx,1\n", r"not occupied L1 buckets, e\.g\. \['x'\]"),
    ("b,w\n0,1\n", r"must have a header 'bucket,weight'"),
])
def test_csv_weights(tmp_path, text, match):
    path = weights_file(tmp_path, "w.csv", text)
    with pytest.raises(ValueError, match=rf"stage1_weights: stage1 file '.*w\.csv'.*{match}"):
        stage1_weights(CODES, (5, 2), path)


def test_csv_weights_accepted(tmp_path):
    path = weights_file(tmp_path, "w.csv", "bucket , weight,note\n0,1,a\n1, 2.5e0 ,b\n2,.5,c\n3,1.,d\n4,+1,e\n")
    ids, w = stage1_weights(CODES, (5, 2), path)
    np.testing.assert_allclose(w * 6.0, [1, 2.5, 0.5, 1, 1])


@pytest.mark.parametrize("mapping,match", [
    ({1: 0.5, "1": 0.2, 0: 1}, r"key 1 and key '1' both name bucket 1"),
    ({np.int64(1): 0.5, "01": 0.2, 0: 1}, r"both name bucket 1"),
    ({True: 1, 0: 1}, r"not occupied L1 buckets"),
    ({1.0: 1, 0: 1}, r"not occupied L1 buckets"),
    ({0: 1, 1: True}, r"non-numeric weight True"),
    ({0: 1, 1: "x"}, r"non-numeric weight 'x'"),
])
def test_mapping_weights(mapping, match):
    with pytest.raises(ValueError, match=rf"stage1_weights: stage1 mapping.*{match}"):
        stage1_weights(CODES, (5, 2), mapping)


def test_cli_names_the_weights_file_and_key(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(0)
    m = hermes.Model([rng.standard_normal((K, D)).astype(np.float32) for K in (3, 2)])
    np.save("x.npy", rng.standard_normal((60, D)).astype(np.float32))
    hermes.label("x.npy", m, "lab", progress=False)
    json.dump({}, open("empty.json", "w"))
    (tmp_path / "dup.json").write_text('{"0": 1, "1": 1, "2": 1, "2": 5}')
    r = CliRunner().invoke(main, ["mix", "lab", "--budget", "5", "--stage1", "dup.json", "--out", "s.parquet"])
    assert r.exit_code == 1 and "dup.json" in r.output and "key '2' twice" in r.output, r.output
    assert not (tmp_path / "s.parquet").exists()


# ------------------------------------------------------------------------------------------ labels files
@pytest.fixture
def labels_file(tmp_path):
    rng = np.random.default_rng(0)
    m = hermes.Model([rng.standard_normal((K, D)).astype(np.float32) for K in (4, 3)])
    np.save(tmp_path / "x.npy", rng.standard_normal((30, D)).astype(np.float32))
    hermes.label(tmp_path / "x.npy", m, tmp_path / "lab", progress=False)
    return tmp_path / "lab" / "x.parquet"


def _rewrite(path, table=None, meta_edit=None):
    import pyarrow.parquet as pq

    t = pq.read_table(path) if table is None else table
    meta = json.loads(pq.read_schema(path).metadata[b"hermes"])
    if meta_edit:
        meta_edit(meta)
    pq.write_table(t.replace_schema_metadata({"hermes": json.dumps(meta)}), path)


@pytest.mark.parametrize("edit", [
    lambda m: m["model"].update(levels="[4, 3]"), lambda m: m["model"].update(levels=[4, True]),
    lambda m: m["model"].update(levels=[4, 3.0]), lambda m: m["model"].update(levels=[]),
    lambda m: m["model"].update(levels=[4, 0]), lambda m: m["model"].pop("levels"),
    lambda m: m["model"].update(fingerprint=7), lambda m: m.update(model="m.safetensors"), lambda m: m.pop("model"),
])
def test_labels_metadata_malformed(labels_file, edit):
    _rewrite(labels_file, meta_edit=edit)
    with pytest.raises(ValueError, match=r"^read_labels: .*x\.parquet: metadata 'hermes' key 'model' must hold"):
        hermes.read_labels(labels_file)


@pytest.mark.parametrize("column,values,match", [
    ("c1", [0] * 29 + [4], r"column c1 row 29 is 4, outside \[0, 4\)"),
    ("c2", [-1] + [0] * 29, r"column c2 row 0 is -1, outside \[0, 3\)"),
    ("c2", [0] * 14 + [None] + [0] * 15, r"column c2 must hold integers without nulls"),
    ("c1", [0.0] * 30, r"column c1 must hold integers"),
])
def test_labels_codes_malformed(labels_file, column, values, match):
    import pyarrow as pa
    import pyarrow.parquet as pq

    t = pq.read_table(labels_file)
    t = t.set_column(t.schema.get_field_index(column), column, pa.array(values))
    _rewrite(labels_file, table=t)
    with pytest.raises(ValueError, match=rf"^read_labels: .*x\.parquet: {match}"):
        hermes.read_labels(labels_file)
