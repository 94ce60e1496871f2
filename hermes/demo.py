"""``hermes demo``: the main job on the bundled data (fit, label, stats, mix, explore), one command.

The bundled data (``examples/data/``: 20,000 PyPI summaries, MiniLM embeddings ``[20000, 384]`` float16 and
their texts, 17 MB) lives in the repository, not in the wheel (0.6 MB without it). The demo finds it
in ``--data DIR``, else in ``./examples/data``, else in the source checkout hermes is imported from, and
otherwise says where it looked. Each step runs the real ``hermes`` command, printed before its output.
"""
from __future__ import annotations

import shlex
import time
from pathlib import Path

import click

EMBEDDINGS = "pypi_minilm_20k.f16.npy"
TEXTS = "pypi_20k.jsonl"
TEXT_FIELD = "summary"
OUTPUTS = ("model.safetensors", "labels", "sample.parquet", "sample.plan.parquet", "explore.html")


def find_data(data=None) -> Path:
    """The bundled data directory: ``data`` if given, else ./examples/data, else the source checkout's."""
    if data is not None:
        cands = [Path(data)]
    else:
        import hermes

        cands = [Path.cwd() / "examples" / "data", Path(hermes.__file__).resolve().parents[1] / "examples" / "data"]
    for c in cands:
        if (c / EMBEDDINGS).is_file() and (c / TEXTS).is_file():
            return c
    where = ", ".join(str(c) for c in dict.fromkeys(cands))
    raise FileNotFoundError(
        f"hermes demo: the bundled data ({EMBEDDINGS} and {TEXTS}) is not in {where}; run the demo from the "
        f"repository root or pass --data path/to/hermes/examples/data")


def _check_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise ValueError(f"hermes demo: --out {out} exists and is not a directory")
    if out.is_dir():
        foreign = sorted(p.name for p in out.iterdir() if p.name not in OUTPUTS and not p.name.startswith("."))
        if foreign:
            raise ValueError(f"hermes demo: --out {out} holds files the demo does not write ({', '.join(foreign[:5])}); "
                             f"choose an empty or new directory")


def run_demo(out="hermes-demo", data=None) -> Path:
    """Runs fit -> label -> stats -> mix -> explore on the bundled data into ``out``; returns the page's path."""
    from .cli import main

    data = find_data(data)
    out = Path(out)
    _check_out(out)
    out.mkdir(parents=True, exist_ok=True)
    emb, texts = data / EMBEDDINGS, data / TEXTS
    model, labels, sample = out / "model.safetensors", out / "labels", out / "sample.parquet"
    plan, page = out / "sample.plan.parquet", out / "explore.html"
    steps = [
        ["fit", emb, "--out", model, "--epochs", "2", "--no-progress"],
        ["label", "--model", model, "--out", labels, emb, "--overwrite", "--no-progress"],
        ["stats", labels, "--embeddings", emb],
        ["mix", labels, "--budget", "5000", "--depth", "2", "--stage1", "proportional", "--stage2", "coverage",
         "--out", sample],
        ["explore", labels, "--texts", texts, "--text-field", TEXT_FIELD, "--plan", plan, "--embeddings", emb,
         "--out", page, "--no-progress"],
    ]
    t0 = time.perf_counter()
    for argv in steps:
        argv = [str(a) for a in argv]
        click.echo(click.style("$ hermes " + shlex.join(argv), bold=True))
        main.main(args=argv, prog_name="hermes", standalone_mode=False)
        click.echo("")
    click.echo(f"demo done in {time.perf_counter() - t0:.0f} s. Open the explorer page in a browser:\n"
               f"  {page.resolve().as_uri()}")
    return page
