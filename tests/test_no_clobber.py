"""Issue 11, class 1: an output never destroys an input or another output.

Every writing command (fit, label, mix, stats --plot) with every output option pointed at every one of its
inputs (under several spellings: as given, through ``..``, a symbolic link, a hard link), at each other, and at
files of a kind it does not own: each is refused with one ``Error:`` line naming the option, and no file in the
working directory changes (compared by content hash before and after).
"""
import hashlib
import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from safetensors.numpy import save_file

import hermes
from hermes._io import Output, atomic_path, check_outputs, same_file
from hermes.cli import main

D = 8
LEVELS = (4, 3)


def snapshot(root):
    """{relative path: sha256} of every file under root (links followed)."""
    out = {}
    for dirpath, _, files in os.walk(root):
        for f in files:
            p = os.path.join(dirpath, f)
            with open(p, "rb") as fh:
                out[os.path.relpath(p, root)] = hashlib.sha256(fh.read()).hexdigest()
    return out


@pytest.fixture
def world(tmp_path, monkeypatch):
    """Inputs of every kind, a model, a labels directory, a mix sample and its plan, all in the cwd."""
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(0)
    (tmp_path / "data").mkdir()
    xa = rng.standard_normal((60, D)).astype(np.float32)
    xb = rng.standard_normal((40, D)).astype(np.float32)
    np.save("data/a.npy", xa)
    pq.write_table(pa.table({"embedding": pa.array(list(xb), pa.list_(pa.float32())), "quality": rng.random(40),
                             "tokens": rng.integers(1, 9, 40)}), "data/b.parquet")
    save_file({"emb": xa}, "data/c.safetensors")
    model = hermes.Model([rng.standard_normal((K, D)).astype(np.float32) for K in LEVELS])
    model.save("model.safetensors")
    hermes.label(["data/a.npy", "data/b.parquet"], model, "lab", progress=False)
    np.save("quality.npy", rng.random(100))
    np.save("tokens.npy", rng.integers(1, 9, 100))
    json.dump({str(i): 1.0 for i in range(LEVELS[0])}, open("weights.json", "w"))
    (tmp_path / "notes.txt").write_text("my notes\n")
    (tmp_path / "photo.png").write_bytes(b"not really a png")
    os.symlink("data/a.npy", "link_a.npy")
    os.link("data/b.parquet", "hard_b.parquet")
    r = CliRunner().invoke(main, ["mix", "lab", "--budget", "20", "--out", "sample.parquet"])
    assert r.exit_code == 0, r.output
    return tmp_path


def refused(*args, match=None, code=(1, 2)):
    """Runs the CLI; it must fail with one 'Error:' line (matching `match`) and leave every file unchanged."""
    before = snapshot(".")
    r = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    assert r.exit_code in code, (args, r.output)
    err = [ln for ln in r.output.splitlines() if ln.startswith("Error:")]
    assert len(err) == 1, r.output
    if match:
        assert any(m in err[0] for m in ([match] if isinstance(match, str) else match)), (args, err[0])
    assert snapshot(".") == before, f"{args} changed files"
    return err[0]


# Every input of each command, spelled as given and otherwise.
EMB_INPUTS = ["data/a.npy", "data/../data/a.npy", "link_a.npy", "data/c.safetensors"]
LABEL_INPUTS = ["lab/a.parquet", "lab/b.parquet", "lab/manifest.json", "lab/./a.parquet"]
SOURCES = ["data/a.npy", "data/b.parquet", "hard_b.parquet", "link_a.npy"]
SIDE = ["quality.npy", "tokens.npy", "weights.json"]


@pytest.mark.parametrize("target", EMB_INPUTS + ["notes.txt", "lab/a.parquet", "sample.parquet", "photo.png"])
def test_fit_out_never_replaces_an_input_or_a_foreign_file(world, target):
    err = refused("fit", "data/a.npy", "data/c.safetensors", "--out", target, "--method", "residual_kmeans", "--levels", "4,3",
                  "--no-progress", match="--out")
    assert target in err


def test_fit_out_directory_and_checkpoint_dir(world):
    refused("fit", "data/a.npy", "--out", "lab", "--method", "residual_kmeans", "--levels", "4,3", "--no-progress")
    refused("fit", "data/a.npy", "--out", "m2.safetensors", "--checkpoint-dir", "data/a.npy", "--method", "residual_kmeans",
            "--levels", "4,3")
    refused("fit", "data", "--out", "m2.safetensors", "--checkpoint-dir", "data", "--method", "residual_kmeans",
            "--levels", "4,3", "--no-progress", match="--checkpoint-dir")
    # an input found inside an input directory counts as an input
    refused("fit", "data/a.npy", "data/c.safetensors", "--out", "data/../data/c.safetensors", "--method", "residual_kmeans",
            "--levels", "4,3", "--no-progress", match="is also the input")


def test_fit_may_replace_its_own_model(world):
    args = ["fit", "data/a.npy", "--out", "model.safetensors", "--method", "residual_kmeans", "--levels", "4,3", "--no-progress"]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    assert hermes.load("model.safetensors").levels == LEVELS


@pytest.mark.parametrize("out,inp", [("data", "data"), ("data/../data", "data"), ("data/a.npy", "data"),
                                     ("model.safetensors", "data"), ("lab", "lab")])
def test_label_out_never_an_input(world, out, inp):
    for flag in ([], ["--overwrite"]):
        refused("label", "--model", "model.safetensors", "--out", out, inp, "--no-progress", *flag)


def test_label_output_file_would_be_an_input_shard(world):
    """data/b.parquet labeled into data/ would write data/b.parquet: refused, --overwrite or not."""
    for flag in ([], ["--overwrite"]):
        refused("label", "--model", "model.safetensors", "--out", "data", "data/b.parquet", "--no-progress", *flag,
                match="is also the input")
    os.makedirs("out2")
    os.symlink(os.path.abspath("data/b.parquet"), "out2/b.parquet")
    refused("label", "--model", "model.safetensors", "--out", "out2", "data/b.parquet", "--no-progress",
            "--overwrite", match="is also the input")


def test_label_model_inside_out_dir(world):
    os.makedirs("o")
    hermes.load("model.safetensors").save("o/manifest.json")
    refused("label", "--model", "o/manifest.json", "--out", "o", "data/a.npy", "--no-progress")
    os.unlink("o/manifest.json")
    (world / "o" / "manifest.json").write_text('{"mine": true}')  # a manifest hermes did not write
    refused("label", "--model", "model.safetensors", "--out", "o", "data/a.npy", "--no-progress",
            match="not a file this command writes")


@pytest.mark.parametrize("option", ["--out", "--plan"])
@pytest.mark.parametrize("target", LABEL_INPUTS + SOURCES + SIDE + ["notes.txt", "photo.png", "model.safetensors"])
def test_mix_outputs_never_replace_inputs(world, option, target):
    other = {"--out": ["--out", "fresh.parquet"], "--plan": ["--plan", "fresh.plan.parquet"]}
    swap = "--plan" if option == "--out" else "--out"
    args = ["mix", "lab", "--budget", "10", "--quality", "quality.npy", "--tokens", "tokens.npy", "--stage1",
            "weights.json", option, target, *other[swap]]
    err = refused(*args, match=option)
    assert os.path.basename(target) in err


def test_mix_out_and_plan_are_different_files(world):
    refused("mix", "lab", "--budget", "10", "--out", "s.parquet", "--plan", "s.parquet", match="same file")
    refused("mix", "lab", "--budget", "10", "--out", "s.parquet", "--plan", "./s.parquet", match="same file")
    # the sample and the plan are two kinds: neither replaces the other's file
    refused("mix", "lab", "--budget", "10", "--out", "sample.plan.parquet", "--plan", "x.parquet", match="--out")
    refused("mix", "lab", "--budget", "10", "--out", "y.parquet", "--plan", "sample.parquet", match="--plan")
    r = CliRunner().invoke(main, ["mix", "lab", "--budget", "10", "--out", "sample.parquet"])  # its own: allowed
    assert r.exit_code == 0, r.output


@pytest.mark.parametrize("target", LABEL_INPUTS + SOURCES + ["quality.npy", "notes.txt", "photo.png"])
def test_stats_plot_never_replaces_inputs(world, target):
    refused("stats", "lab", "--plot", target, "--embeddings", "data/a.npy", "--embeddings", "data/b.parquet",
            "--labels", "quality.npy", "--no-progress", match="--plot")


def test_stats_plot_refuses_the_embeddings_and_labels_files(world):
    np.save("emb.png", np.zeros((100, D), np.float32))  # a .png name holding the embeddings
    refused("stats", "lab", "--plot", "emb.png", "--no-progress", match="--plot")
    refused("stats", "lab", "--plot", "x.npy", match="--plot")  # not an image format


# ---------------------------------------------------------------------------------------------- API
def test_label_api_refuses_the_same_cases(world):
    m = hermes.load("model.safetensors")
    before = snapshot(".")
    for out, inputs, kw in [("data", "data", {}), ("data", ["data/b.parquet"], {"overwrite": True}),
                            ("data/a.npy", "data/a.npy", {})]:
        with pytest.raises(ValueError, match=r"^label: "):
            hermes.label(inputs, m, out, progress=False, **kw)
    assert snapshot(".") == before


def test_check_outputs_compares_files_not_strings(tmp_path):
    a = tmp_path / "a.bin"
    a.write_bytes(b"x")
    os.link(a, tmp_path / "hard.bin")
    os.symlink(a, tmp_path / "soft.bin")
    for spelling in [a, tmp_path / "hard.bin", tmp_path / "soft.bin", tmp_path / "sub" / ".." / "a.bin"]:
        (tmp_path / "sub").mkdir(exist_ok=True)
        assert same_file(spelling, a)
        with pytest.raises(ValueError, match="is also the input a"):
            check_outputs("f", [Output("--out", spelling, lambda p: True)], [("the input a", a)])
    assert not same_file(tmp_path / "new1", tmp_path / "new2")
    with pytest.raises(ValueError, match="--x and --y are the same file"):
        check_outputs("f", [Output("--x", tmp_path / "n"), Output("--y", tmp_path / "." / "n")])
    check_outputs("f", [Output("--x", tmp_path / "n1"), Output("--y", tmp_path / "n2")], [("the input a", a)])


def test_kind_predicates(tmp_path):
    from hermes._io import owns_csv_header, owns_hermes_parquet, owns_hermes_safetensors, owns_html, owns_image

    page, png, csv = tmp_path / "p.html", tmp_path / "i.png", tmp_path / "plan.csv"
    page.write_text("\n  <!DOCTYPE html><html></html>")
    png.write_bytes(b"\x89PNG\r\n\x1a\n rest")
    csv.write_text('"l1","bucket","size"\n1,2,3\n')
    assert owns_html(page) and not owns_html(png) and owns_image(png) and not owns_image(page)
    assert owns_csv_header("l1,bucket")(csv) and not owns_csv_header("l1,bucket")(page)
    hermes.Model([np.eye(2, dtype=np.float32)]).save(tmp_path / "m.safetensors")
    assert owns_hermes_safetensors("hermes-model")(tmp_path / "m.safetensors")
    for p in (page, png, csv, tmp_path / "missing"):
        assert not owns_hermes_safetensors("hermes-model")(p) and not owns_hermes_parquet("hermes-mix")(p)


def test_atomic_write_errors_name_the_users_path(tmp_path):
    (tmp_path / "d").mkdir()
    with pytest.raises(OSError) as e:
        atomic_path(tmp_path / "d", lambda tmp: open(tmp, "w").write("x"))
    assert str(tmp_path / "d") in str(e.value) and ".tmp" not in str(e.value) and "directory" in str(e.value)
    (tmp_path / "f").write_text("a file")
    with pytest.raises(OSError) as e:
        hermes.Model([np.eye(2, dtype=np.float32)]).save(tmp_path / "f" / "model.safetensors")
    assert str(tmp_path / "f" / "model.safetensors") in str(e.value) and ".tmp" not in str(e.value)
    assert sorted(os.listdir(tmp_path)) == ["d", "f"]  # no temporary file left behind


@pytest.mark.parametrize("out,inp", [("data", "data/a.npy"), ("data/../data", "data"), ("data/a.npy", "data/b.parquet"),
                                     ("model.safetensors", "data/b.parquet")])
def test_convert_out_never_an_input(world, out, inp):
    for flag in ([], ["--overwrite"]):
        refused("convert", inp, "--out", out, "--no-progress", *flag)


def test_convert_refuses_a_foreign_file_where_its_output_goes(world):
    os.makedirs("conv")
    (world / "conv" / "b.npy").write_text("not an array")
    for flag in ([], ["--overwrite"]):
        refused("convert", "data/b.parquet", "--out", "conv", "--no-progress", *flag)
