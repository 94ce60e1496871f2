"""The ``hermes`` command line: fit a model, label shards, inspect buckets, draw a mixture, show the build.

Every command has ``--help``. Bad input ends with exit code 1 and a one-line ``Error: ...`` naming the file,
column or row (set ``HERMES_DEBUG=1`` for the traceback). Files are written atomically (temp file + rename).
"""
from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import click
import numpy as np

from ._version import __version__
from ._io import IMAGE_SUFFIXES, Output, check_outputs, owns_csv_header, owns_hermes_parquet, owns_hermes_safetensors, \
    owns_image
from ._io import atomic_path as _atomic_path
from ._io import is_uri

_USER_ERRORS = (ValueError, TypeError, OSError, RuntimeError, KeyError, ImportError)


class _Group(click.Group):
    """A click group with command aliases, whose commands turn user errors into one-line ClickExceptions."""

    aliases = {"assign": "label"}

    def get_command(self, ctx, cmd_name):
        return super().get_command(ctx, self.aliases.get(cmd_name, cmd_name))

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except _USER_ERRORS as e:
            if os.environ.get("HERMES_DEBUG"):
                raise
            msg = " ".join(str(e).split()) or type(e).__name__
            if isinstance(e, KeyError):
                msg = f"missing key {msg}"
            raise click.ClickException(msg) from None


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(version=__version__, prog_name="hermes", message="%(prog)s %(version)s")
def main():
    """hermes: multi-granularity labels (L1, L12, L123 buckets) for pre-training data mixtures.

    \b
    Typical flow:
      hermes fit emb.npy --out model.safetensors      # learn the transform + 3-stage RVQ
      hermes label --model model.safetensors --out labels/ shards/
      hermes stats labels/ --embeddings emb.npy        # metrics and pool sizes per depth
      hermes mix labels/ --budget 100000 --out sample.parquet
      hermes explore labels/ --texts docs.jsonl --text-field text --out buckets.html

    hermes demo runs all of it on the bundled data.
    """


# -------------------------------------------------------------------------------------- helpers


def _parse_levels(ctx, param, value):
    try:
        levels = tuple(int(v) for v in value.split(","))
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers such as 256,256,256, got {value!r}") from None
    if not levels or any(k < 1 for k in levels):
        raise click.BadParameter(f"every level needs at least 1 codeword, got {value!r}")
    return levels


def _rate(rows: int, seconds: float) -> str:
    return f"{rows / seconds:,.0f} rows/s" if rows and seconds > 0 else "-"


def _read_vector(path: str, col: str | None, what: str) -> np.ndarray:
    """A per-row vector [N] from .npy, .parquet (column col), .jsonl (key col) or .txt/.csv-less text lines."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"--{what}: no such file: {p}")
    ext = p.suffix.lower()
    if ext == ".npy":
        try:
            a = np.load(p, allow_pickle=False)
        except Exception as e:
            raise ValueError(f"--{what}: {p} is not a readable .npy file: {e}") from None
        if a.ndim != 1:
            raise ValueError(f"--{what}: {p} must hold a 1-d array [N], got shape {a.shape}")
        return a
    if ext == ".parquet":
        import pyarrow.parquet as pq

        try:
            names = pq.read_schema(p).names
        except Exception as e:
            raise ValueError(f"--{what}: {p} is not a readable parquet file: {e}") from None
        if col is None and len(names) == 1:
            col = names[0]
        if col not in names:
            raise ValueError(f"--{what}: {p} has no column {col!r} (columns: {names[:12]}); name it with "
                             f"--{what}-col")
        return pq.read_table(p, columns=[col]).column(0).to_numpy(zero_copy_only=False)
    if ext == ".jsonl":
        if col is None:
            raise ValueError(f"--{what}: name the key of {p} to read with --{what}-col")
        out = []
        with open(p) as f:
            for i, line in enumerate(f):
                try:
                    out.append(json.loads(line)[col])
                except (ValueError, KeyError, TypeError) as e:
                    raise ValueError(f"--{what}: {p} line {i + 1}: no key {col!r} ({type(e).__name__})") from None
        return np.asarray(out)
    if ext == ".txt":
        return np.asarray(p.read_text().splitlines())
    raise ValueError(f"--{what}: {p} must be .npy, .parquet, .jsonl or .txt")


def _per_row(lab, file: str | None, col: str | None, what: str) -> np.ndarray | None:
    """--WHAT FILE [--WHAT-col COL] or --WHAT-col COL alone (a column of the labels files or their sources)."""
    if file is None and col is None:
        return None
    if file is not None:
        v = _read_vector(file, col, what)
        src = file
    else:
        v = lab.column(col, fn=f"--{what}-col")
        src = f"column {col!r}"
    if v.shape[0] != lab.codes.shape[0]:
        raise ValueError(f"--{what}: {src} has {v.shape[0]} rows, the labels have {lab.codes.shape[0]}")
    return v


def _check_finite_rows(lab, v: np.ndarray, what: str, src: str) -> np.ndarray:
    try:
        v = v.astype(np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"--{what}: {src} must be numeric, got dtype {v.dtype}") from None
    bad = np.flatnonzero(~np.isfinite(v))
    if bad.size:
        i = int(bad[0])
        raise ValueError(f"--{what}: {src} is {v[i]} at row {int(lab.rows[i])} of shard {lab.shards[lab.shard[i]]} "
                         f"(row {i} overall, {bad.size} such rows)")
    return v


# ------------------------------------------------------------------------------------------ fit
@main.command(short_help="Fit a model (transform + RVQ) on embeddings.")
@click.argument("inputs", nargs=-1, required=True, metavar="INPUT...")
@click.option("--out", "-o", required=True, type=click.Path(dir_okay=False), help="Model file to write (.safetensors).")
@click.option("--levels", default="256,256,256", show_default=True, callback=_parse_levels,
              help="Codebook sizes per stage, comma-separated.")
@click.option("--method", default="hermes", show_default=True, callback=lambda ctx, param, v: _parse_method(v),
              metavar="[hermes|plain_rvq|residual_kmeans]",
              help="hermes: the learned transform + the EMA residual quantizer (the paper's HERMES); plain_rvq: "
                   "the same quantizer without the transform (the paper's plain RVQ); residual_kmeans: stage-by-stage "
                   "k-means, no training (the others' initialization; this was --method rvq).")
@click.option("--metric", type=click.Choice(["cos", "l2"]), default="cos", show_default=True,
              help="Assignment metric at each stage.")
@click.option("--epochs", type=click.IntRange(min=1), default=None, help="Training epochs (default: fit's).")
@click.option("--batch-size", type=click.IntRange(min=1), default=None, help="Minibatch size (default: fit's).")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--device", default=None, help="torch device for training (cpu, cuda, cuda:N).")
@click.option("--checkpoint-dir", type=click.Path(file_okay=False), default=None,
              help="Write a checkpoint per epoch here.")
@click.option("--resume", is_flag=True, help="Resume from the last checkpoint in --checkpoint-dir.")
@click.option("--sample", type=click.IntRange(min=1), default=None,
              help="Fit on this many rows drawn uniformly at random (default: all).")
@click.option("--column", default="embedding", show_default=True, help="Embedding column of parquet inputs.")
@click.option("--tensor", default=None, help="Tensor name in .safetensors inputs (default: the only 2-d one).")
@click.option("--progress/--no-progress", default=True, show_default=True)
def fit(inputs, out, levels, method, metric, epochs, batch_size, seed, device, checkpoint_dir, resume, sample,
        column, tensor, progress):
    """Fit a model on embeddings INPUT... (.npy, .safetensors, parquet) and save it to --out."""
    from .readers import read_embeddings

    try:
        from . import train
    except ImportError as e:
        raise click.ClickException(f"hermes.train is not available in this build ({e})") from None
    if resume and not checkpoint_dir:
        raise click.BadParameter("--resume needs --checkpoint-dir", param_hint="--resume")
    _check_fit_outputs(list(inputs), out, checkpoint_dir)
    dist, rank, created, device = _torchrun_init(device)
    try:
        _fit(inputs, out, levels, method, metric, epochs, batch_size, seed, device, checkpoint_dir, resume, sample,
             column, tensor, progress, train, rank)
    finally:
        if created:
            dist.destroy_process_group()


def _torchrun_init(device):
    """Under torchrun (WORLD_SIZE > 1 in the environment, no process group yet): initializes the process group
    from torchrun's environment, NCCL on CUDA (this rank's LOCAL_RANK device) else gloo. Returns
    (torch.distributed or None, rank, whether this call created the group, the device to train on)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None, 0, False, device
    import torch
    import torch.distributed as dist

    if dist.is_initialized():
        return dist, dist.get_rank(), False, device
    cuda = (device or "").startswith("cuda") or (device is None and torch.cuda.is_available())
    if cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    dist.init_process_group("nccl" if cuda else "gloo")
    return dist, dist.get_rank(), True, device


def _fit(inputs, out, levels, method, metric, epochs, batch_size, seed, device, checkpoint_dir, resume, sample,
         column, tensor, progress, train, rank):
    from .readers import open_fit_input, read_embeddings

    t0 = time.perf_counter()
    world = train._dist()[2]
    if world > 1:  # each rank reads its share only: local .npy / .safetensors by rows, others a 1/world partition
        x = open_fit_input(list(inputs), column=column, tensor=tensor, sample=sample, seed=seed, fn="hermes fit")
    else:
        x = read_embeddings(list(inputs), column=column, tensor=tensor, sample=sample, seed=seed, fn="hermes fit")
    kw = dict(method=method, metric=metric, seed=seed, progress=progress)
    for k, v in dict(epochs=epochs, batch_size=batch_size, device=device, checkpoint_dir=checkpoint_dir).items():
        if v is not None:
            kw[k] = v
    if resume:
        kw["resume"] = True
    try:
        model = train.fit(x, levels, **kw)
    except ValueError as e:
        _name_input_row(e, list(inputs), column, tensor, sample, seed)
        raise
    t2 = time.perf_counter()
    if os.environ.get("HERMES_DEBUG_ROWS") == "1" and "input_rows_read" in model.train_stats:
        click.echo(f"hermes debug: rank {rank} of {world} input_rows_read "
                   f"{json.dumps(model.train_stats['input_rows_read'], sort_keys=True)} of {x.shape[0]} rows",
                   err=True)
    if rank:  # under torchrun only rank 0 writes (the model; fit writes checkpoints on rank 0 only)
        return
    model.save(out)
    click.echo(f"fitted {method} on {x.shape[0]:,} x {x.shape[1]} embeddings (levels "
               f"{','.join(map(str, model.levels))}, metric {model.metric}) in {t2 - t0:.1f} s -> {out}")


def _name_input_row(e: ValueError, inputs, column, tensor, sample, seed) -> None:
    """Re-raises fit's "x row R ..." naming the input file and its row (R indexes the rows read, a sample
    or the inputs one after another); returns for other errors."""
    import re

    from .readers import expand_inputs, open_shard, sample_rows

    m = re.match(r"^fit: x row (\d+) (.*)$", str(e), re.S)
    if not m:
        return
    shards = [open_shard(p, column=column, tensor=tensor, fn="hermes fit") for p in expand_inputs("hermes fit", inputs)]
    sizes = np.array([s.n for s in shards])
    row = int(m.group(1))
    if sample is not None and sample < sizes.sum():
        row = int(sample_rows(int(sizes.sum()), sample, seed)[row])
    i = int(np.searchsorted(np.cumsum(sizes), row, side="right"))
    local = row - int(sizes[:i].sum())
    raise ValueError(f"hermes fit: {shards[i].path} row {local} {m.group(2)}") from None


def _input_files(inputs) -> list:
    """(what, path) for every input argument and, for a directory, every shard file in it."""
    from .label import SUFFIXES

    out = []
    for p in map(Path, inputs):
        out.append(("the input", p))
        if p.is_dir():
            out += [("the input", q) for q in sorted(p.iterdir()) if q.suffix.lower() in SUFFIXES]
    return out


def _check_fit_outputs(inputs, out, checkpoint_dir) -> None:
    from .model import FORMAT

    outputs = [Output("--out", out, owns_hermes_safetensors(FORMAT), kind="a hermes model")]
    if checkpoint_dir:
        outputs.append(Output("--checkpoint-dir", checkpoint_dir, is_dir=True))
    check_outputs("hermes fit", outputs, _input_files(inputs))
    if checkpoint_dir:
        for what, p in _input_files(inputs):
            if Path(p).is_dir() and Path(p).resolve() == Path(checkpoint_dir).resolve():
                raise ValueError(f"hermes fit: --checkpoint-dir {checkpoint_dir} is the input directory {p}; "
                                 f"give checkpoints their own directory")


# ---------------------------------------------------------------------------------------- label
def _label_arrow_pool() -> None:
    """For this `hermes label` process: pyarrow's jemalloc pool, returning freed pages to the OS after 100 ms.

    Decoding parquet allocates every batch afresh, and with pyarrow's default pool (mimalloc) each batch faulted
    in fresh pages. Measured on this project's 2-core VM with `hermes label` on 200k x 1024 rows, 8,8,8 model:
    - fixed_size_list<float16>, 1 row group: 50.7k -> 74-80k rows/s, peak RSS 1.21 -> 1.03 GB;
    - the same with 16k-row groups: 94.6k -> 111-114k rows/s, 0.97 -> 0.77 GB;
    - list<float32>, 1 row group: 29.2k -> 45k rows/s, 1.67 -> 1.44 GB.
    Never purging (decay -1) was as fast and held up to 1.68 GB. The CLI owns its process, so it may choose the
    allocator; the library never changes it. HERMES_ARROW_POOL=default keeps pyarrow's own.
    """
    import os

    if os.environ.get("HERMES_ARROW_POOL", "").lower() == "default":
        return
    import pyarrow as pa

    try:
        pool = pa.jemalloc_memory_pool()
        pa.jemalloc_set_decay_ms(100)
    except NotImplementedError:  # a pyarrow built without jemalloc (ArrowNotImplementedError)
        return
    pa.set_memory_pool(pool)


@main.command("label", short_help="Label embedding shards (alias: assign).")
@click.argument("inputs", nargs=-1, required=True, metavar="INPUT...")
@click.option("--model", "-m", "model_path", required=True, type=click.Path(dir_okay=False),
              help="Model file written by `hermes fit` or Model.save.")
@click.option("--out", "-o", required=True, type=click.Path(file_okay=False), help="Output directory.")
@click.option("--column", default="embedding", show_default=True, help="Embedding column of parquet inputs.")
@click.option("--tensor", default=None, help="Tensor name in .safetensors inputs (default: the only 2-d one).")
@click.option("--batch-size", type=click.IntRange(min=1), default=65536, show_default=True,
              help="Rows per batch (bounds the memory).")
@click.option("--device", default=None, help="cpu, cuda or cuda:N (default: CUDA when available).")
@click.option("--overwrite", is_flag=True, help="Relabel shards whose output already exists.")
@click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="local: this process; ray: a Ray Data actor pool over the shards' row ranges (--batch-size rows "
              "per range; needs hermes-rvq[ray]).")
@click.option("--address", default=None, help="--engine ray: address of a running Ray cluster (default: start a "
              "local one).")
@click.option("--concurrency", type=click.IntRange(min=1), default=None,
              help="--engine ray: actors (default: as many as the cluster's CPUs/GPUs allow).")
@click.option("--num-cpus-per-worker", type=click.FloatRange(min=0, min_open=True), default=1.0, show_default=True,
              help="--engine ray: CPUs per actor (threads of its CPU executor).")
@click.option("--num-gpus-per-worker", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="--engine ray: GPUs per actor (> 0: actors label on CUDA).")
@click.option("--progress/--no-progress", default=True, show_default=True)
def label_cmd(inputs, model_path, out, column, tensor, batch_size, device, overwrite, engine, address, concurrency,
              num_cpus_per_worker, num_gpus_per_worker, progress):
    """Label embedding shards INPUT... (files or directories) into --out, one parquet file per shard.

    Alias: `hermes assign`. Each output holds row, c1..cL and bucket_L1.. ids; it appears only when complete,
    and a rerun skips the shards already done. out/manifest.json lists the shards when all are done.
    """
    from .label import label

    if engine == "local":
        _label_arrow_pool()
    ray_opts = dict(address=address, concurrency=concurrency, num_cpus_per_worker=num_cpus_per_worker,
                    num_gpus_per_worker=num_gpus_per_worker)
    if engine == "local" and any(ray_opts[k] is not None for k in ("address", "concurrency")):
        raise click.BadParameter("--address and --concurrency need --engine ray", param_hint="--engine")
    rep = label(list(inputs), model_path, out, column=column, tensor=tensor, batch_size=batch_size,
                device=device, progress=progress, overwrite=overwrite, engine=engine,
                ray_options=ray_opts if engine == "ray" else None)
    n = len(rep.manifest["shards"])
    click.echo(f"labeled {len(rep.labeled)} shard(s) ({rep.rows_labeled:,} rows, "
               f"{_rate(rep.rows_labeled, rep.seconds)}), {len(rep.skipped)} already done; "
               f"{out}/manifest.json lists {n} shard(s), {rep.rows:,} rows")
    if rep.nodes:
        click.echo(f"ray: {len(rep.nodes)} node(s) labeled " +
                   ", ".join(f"{rows:,} rows on {node[:8]}" for node, rows in sorted(rep.nodes.items())))


# -------------------------------------------------------------------------------------- convert
@main.command(short_help="Rewrite embedding shards as .npy (the fastest format to label).")
@click.argument("inputs", nargs=-1, required=True, metavar="INPUT...")
@click.option("--out", "-o", required=True, type=click.Path(file_okay=False), help="Output directory.")
@click.option("--column", default="embedding", show_default=True, help="Embedding column of parquet inputs.")
@click.option("--tensor", default=None, help="Tensor name in .safetensors inputs (default: the only 2-d one).")
@click.option("--dtype", type=click.Choice(["float16", "float32"]), default=None,
              help="Output dtype (default: the input's; bfloat16 and float64 become float32).")
@click.option("--batch-size", type=click.IntRange(min=1), default=65536, show_default=True,
              help="Rows per batch (bounds the memory).")
@click.option("--overwrite", is_flag=True, help="Replace existing .npy outputs (never an input).")
@click.option("--progress/--no-progress", default=True, show_default=True)
def convert(inputs, out, column, tensor, dtype, batch_size, overwrite, progress):
    """Rewrite embedding shards INPUT... (parquet, safetensors, .npy; files or directories) as OUT/<stem>.npy.

    hermes label memory-maps .npy shards (no decoding); a parquet list column is decoded value by value, several
    times slower than labeling. Each output appears only when complete; inputs are never replaced.
    """
    from .convert import convert as run

    rep = run(list(inputs), out, column=column, tensor=tensor, dtype=dtype, batch_size=batch_size,
              overwrite=overwrite, progress=progress, fn="hermes convert")
    click.echo(f"converted {len(rep.outputs)} shard(s) ({rep.rows:,} rows, {_rate(rep.rows, rep.seconds)}) -> {out}")


# ---------------------------------------------------------------------------------------- stats
_METRIC_COLS = ["name", "n_buckets", "entropy", "effective_buckets", "centroid_cosine", "recall_at_k", "nmi", "purity"]
_POOL_COLS = ["name", "nominal", "n_buckets", "occupancy", "children_mean", "min", "p10", "median", "mean", "p90",
              "max", "share_below", "doc_p10", "doc_median", "doc_p90"]
_ELIG_COLS = ["name", "n_buckets", "eligible", "elig_p10", "elig_median", "elig_p90", "elig_doc_p10", "elig_doc_median",
              "elig_doc_p90"]


@main.command(short_help="Metrics and pool sizes per depth.")
@click.argument("labels_paths", nargs=-1, required=True, metavar="LABELS...")
@click.option("--embeddings", "-e", multiple=True, help="Embeddings in the labels' row order (repeatable), for "
              "centroid cosine and Recall@k.")
@click.option("--column", default="embedding", show_default=True, help="Embedding column of parquet embeddings.")
@click.option("--tensor", default=None, help="Tensor name in .safetensors embeddings.")
@click.option("--labels", "classes_file", default=None, help="Reference classes per row for NMI and purity "
              "(.npy, .parquet, .jsonl, .txt).")
@click.option("--labels-col", "classes_col", default=None, help="Column/key of --labels, or alone: a column of "
              "the labels files or of their parquet sources.")
@click.option("--k", type=click.IntRange(min=0), default=10, show_default=True, help="Recall@k (0: skip it).")
@click.option("--queries", type=click.IntRange(min=1), default=1000, show_default=True,
              help="Recall@k query documents, drawn with --seed and searched against all scored documents (all "
              "documents are queries when there are at most this many).")
@click.option("--sample", type=click.IntRange(min=1), default=None,
              help="Score centroid cosine and Recall@k on this many documents drawn with --seed (default: all).")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True, help="Seed of the query and document samples.")
@click.option("--memory", "memory_mb", type=click.IntRange(min=16), default=256, show_default=True,
              help="MiB for per-bucket sums; more buckets than fit are summed in further passes over the rows.")
@click.option("--progress/--no-progress", default=True, show_default=True)
@click.option("--small", type=click.IntRange(min=0), default=30, show_default=True,
              help="share_below counts buckets with fewer documents than this.")
@click.option("--plot", type=click.Path(dir_okay=False), default=None,
              help="Draw bucket-size distributions per depth to this image (needs matplotlib).")
@click.option("--quality", "quality_file", default=None, help="Quality scores per row (.npy, .parquet, .jsonl): also "
              "report the eligible pool under quality top-p (as hermes mix --stage2 quality keeps it).")
@click.option("--quality-col", default=None, help="Column/key of --quality, or alone: a column of the labels files "
              "or of their parquet sources.")
@click.option("--p", "p", type=float, default=0.3, show_default=True, help="Kept top fraction for --quality.")
def stats(labels_paths, embeddings, column, tensor, classes_file, classes_col, k, queries, sample, seed, memory_mb,
          progress, small, plot, quality_file, quality_col, p):
    """Metrics and pool sizes per depth (L1, L12, ...) of the labels in LABELS... (files or directories)."""
    from ._stream import EmbeddingStream
    from .buckets import format_table, summary_table
    from .label import read_labels
    from .metrics import format_report, report, report_streaming
    from .readers import expand_inputs, open_shard

    if plot:
        if Path(plot).suffix.lower() not in IMAGE_SUFFIXES:
            raise click.BadParameter(f"{plot} must end in one of {', '.join(IMAGE_SUFFIXES)} (the image format)",
                                     param_hint="--plot")
    lab = read_labels(list(labels_paths), fn="hermes stats")
    if plot:
        ins = _labels_inputs(labels_paths, lab) + [("the --embeddings", p) for _, p in _input_files(embeddings)] + \
            [("the --labels file", classes_file)]
        check_outputs("hermes stats", [Output("--plot", plot, owns_image, kind="an image")], ins)
        _require_matplotlib()
    n = lab.codes.shape[0]
    classes = _per_row(lab, classes_file, classes_col, "labels")
    note = ""
    if embeddings:
        shards = [open_shard(p, column=column, tensor=tensor, fn="hermes stats")
                  for p in expand_inputs("hermes stats", list(embeddings))]
        stream = EmbeddingStream(shards, fn="hermes stats")
        if stream.n != n:
            raise ValueError(f"--embeddings: {', '.join(embeddings)} hold {stream.n:,} rows, the labels hold {n:,}")
        rows, info = report_streaming(stream, lab.codes, lab.levels, labels=classes, k=(k or None), queries=queries,
                                      sample=sample, seed=seed, small=small, memory=memory_mb << 20,
                                      progress=progress, fn="hermes stats")
        scored = (f"a sample of {info['n_scored']:,} documents (seed {seed})" if info["sampled"]
                  else f"all {info['n_scored']:,} documents")
        note = f"centroid_cosine over {scored}"
        if k:
            q = info["queries"]
            note += (f"; recall_at_k (k={k}): {'every document' if q == info['n_scored'] else f'{q:,} seeded queries'}"
                     f" searched against {scored}")
            if info["search_screened"]:
                note += (f" (float32 neighbours; a bf16 GEMM screened {info['search_screened']:,} of "
                         f"{info['search_steps']:,} blocks, {info['search_rescored']:,} rows rescored in float32)")
    else:
        rows = report(None, lab.codes, lab.levels, labels=classes, k=None, small=small)
    cols = [c for c in _METRIC_COLS if c in rows[0]]
    click.echo(f"{n:,} documents in {len(lab.files)} labels file(s), levels {','.join(map(str, lab.levels))}")
    click.echo(format_report(rows, cols))
    if note:
        click.echo(note)
    click.echo("")
    quality = _per_row(lab, quality_file, quality_col, "quality")
    if quality is not None:
        quality = _check_finite_rows(lab, quality, "quality", quality_file or f"column {quality_col!r}")
    table = summary_table(lab.codes, lab.levels, small=small, quality=quality, p=p)
    click.echo(f"pool sizes (documents per occupied bucket; share_below: buckets with < {small}; doc_*: the size of "
               f"the bucket a random document falls in)")
    click.echo(format_table(table, _POOL_COLS))
    if quality is not None:
        click.echo("")
        click.echo(f"eligible pool under quality top-p = {p:g} (documents >= the (1 - p) quantile of their bucket; "
                   f"elig_*: per bucket, elig_doc_*: the pool a random eligible document falls in)")
        click.echo(format_table(table, _ELIG_COLS))
    if plot:
        _plot_sizes(lab, Path(plot))
        click.echo(f"plot -> {plot}")


def _labels_inputs(labels_paths, lab) -> list:
    """(what, path) for every LABELS argument, the labels files and manifests read, and their sources."""
    from .label import MANIFEST

    ins = [("the input LABELS", p) for p in labels_paths] + [("the labels file", f) for f in lab.files]
    ins += [("the manifest", Path(p) / MANIFEST) for p in labels_paths if Path(p).is_dir()]
    return ins + [("the labels' source", s) for s in lab.sources if s]


def _require_matplotlib():
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise click.ClickException("--plot needs matplotlib, which is not installed: "
                                   "pip install matplotlib (or hermes-rvq[plot])") from None


def _plot_sizes(lab, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .buckets import bucket_ids, bucket_sizes, depth_name

    L = lab.codes.shape[1]
    fig, axes = plt.subplots(1, L, figsize=(4.2 * L, 3.4), squeeze=False)
    for depth, ax in zip(range(1, L + 1), axes[0]):
        sizes = bucket_sizes(bucket_ids(lab.codes, depth, lab.levels))[1]
        hi = max(int(sizes.max()) if sizes.size else 1, 2)
        ax.hist(sizes, bins=np.unique(np.geomspace(1, hi + 1, 40).astype(int)), color="C0")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(f"{depth_name(depth)}: {sizes.size:,} buckets, median {np.median(sizes) if sizes.size else 0:g}")
        ax.set_xlabel("documents per bucket")
    axes[0][0].set_ylabel("buckets")
    fig.tight_layout()
    suffix = path.suffix or ".png"
    _atomic_path(path, lambda tmp: fig.savefig(tmp, format=suffix.lstrip("."), dpi=120))
    plt.close(fig)


# ------------------------------------------------------------------------------------------ mix
def _suffix(path) -> str:
    """The lower-case suffix of a path or URI."""
    return os.path.splitext(str(path).partition("?")[0])[1].lower()


def _parse_stage1(value: str):
    if value in ("uniform", "proportional"):
        return value
    try:
        tau = float(value)
    except ValueError:
        if Path(value).suffix.lower() not in (".json", ".csv"):
            raise click.BadParameter(f"expected uniform, proportional, a temperature > 0, or a .json/.csv weights "
                                     f"file, got {value!r}", param_hint="--stage1") from None
        if not Path(value).is_file():
            raise click.BadParameter(f"weights file {value} does not exist", param_hint="--stage1") from None
        return value
    if not tau > 0:
        raise click.BadParameter(f"a temperature must be > 0, got {value}", param_hint="--stage1")
    return tau


_FIT_METHODS = ("hermes", "plain_rvq", "residual_kmeans")
_RENAMED_METHODS = {"rvq": "'rvq' was residual k-means and is now called 'residual_kmeans'; the paper's plain RVQ "
                           "(the EMA quantizer without the learned transform) is 'plain_rvq'"}


def _parse_method(value):
    if value in _RENAMED_METHODS:
        raise click.BadParameter(_RENAMED_METHODS[value], param_hint="--method")
    if value not in _FIT_METHODS:
        raise click.BadParameter(f"expected one of {', '.join(_FIT_METHODS)}, got {value!r}", param_hint="--method")
    return value


@main.command(short_help="Draw a two-stage mixture sample.")
@click.argument("labels_paths", nargs=-1, required=True, metavar="LABELS...")
@click.option("--budget", required=True, help="Documents to draw (or tokens, with --tokens/--tokens-col).")
@click.option("--depth", type=click.IntRange(min=1), default=2, show_default=True,
              help="Depth of the stage-2 sub-buckets (2: L12, 3: L123).")
@click.option("--stage1", default="uniform", show_default=True,
              help="L1 weights: uniform, proportional, a temperature (e.g. 2.0), or weights.json/.csv.")
@click.option("--stage2", type=click.Choice(["coverage", "quality", "random"]), default="coverage", show_default=True,
              help="Within-L1 rule.")
@click.option("--quality", "quality_file", default=None, help="Quality scores per row (.npy, .parquet, .jsonl).")
@click.option("--quality-col", default=None, help="Column/key of --quality, or alone: a column of the labels "
              "files or of their parquet sources.")
@click.option("--p", "p", type=float, default=0.3, show_default=True, help="Kept top fraction for --stage2 quality.")
@click.option("--tokens", "tokens_file", default=None, help="Token counts per row (makes --budget a token budget).")
@click.option("--tokens-col", default=None, help="Column of the token counts (as --quality-col).")
@click.option("--replace", is_flag=True, help="Draw with replacement.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--out", "-o", required=True, type=click.Path(dir_okay=False),
              help="Drawn documents (parquet: shard, row, bucket, l1), in draw order.")
@click.option("--plan", default=None, type=click.Path(dir_okay=False),
              help="Per-bucket plan (.parquet or .csv; default: OUT with suffix .plan.parquet).")
def mix(labels_paths, budget, depth, stage1, stage2, quality_file, quality_col, p, tokens_file, tokens_col, replace,
        seed, out, plan):
    """Draw a two-stage mixture sample (L1 weights, then a rule within each L1 bucket) from LABELS...."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from .buckets import depth_name, unpack
    from .label import read_labels
    from .mix import sample

    stage1 = _parse_stage1(stage1)
    lab = read_labels(list(labels_paths), fn="hermes mix")
    if depth > lab.codes.shape[1]:
        raise click.BadParameter(f"the labels have {lab.codes.shape[1]} levels; depth {depth} is too deep",
                                 param_hint="--depth")
    out = out if is_uri(out) else Path(out)
    if plan is None:  # OUT with suffix .plan.parquet (a URI keeps its scheme, bucket and query)
        base, q, query = str(out).partition("?")
        plan = os.path.splitext(base)[0] + ".plan.parquet" + q + query
    plan = plan if is_uri(plan) else Path(plan)
    ins = _labels_inputs(labels_paths, lab) + [("the --quality file", quality_file), ("the --tokens file", tokens_file)]
    if isinstance(stage1, str) and stage1 not in ("uniform", "proportional"):
        ins.append(("the --stage1 file", stage1))
    owns_plan = owns_csv_header("l1,bucket") if _suffix(plan) == ".csv" else owns_hermes_parquet("hermes-mix-plan")
    check_outputs("hermes mix", [Output("--out", out, owns_hermes_parquet("hermes-mix"), kind="a hermes mix sample"),
                                 Output("--plan", plan, owns_plan, kind="a hermes mix plan")], ins)
    quality = _per_row(lab, quality_file, quality_col, "quality")
    if quality is not None:
        quality = _check_finite_rows(lab, quality, "quality", quality_file or f"column {quality_col!r}")
    if stage2 == "quality" and quality is None:
        raise click.BadParameter("--stage2 quality needs --quality FILE or --quality-col COL", param_hint="--stage2")
    tokens = _per_row(lab, tokens_file, tokens_col, "tokens")
    if tokens is not None:
        tokens = _check_finite_rows(lab, tokens, "tokens", tokens_file or f"column {tokens_col!r}")
    try:
        b = float(budget)
    except ValueError:
        raise click.BadParameter(f"expected a number, got {budget!r}", param_hint="--budget") from None
    if tokens is None:
        if not b.is_integer() or b < 0:
            raise click.BadParameter(f"a document budget must be a whole number >= 0, got {budget}",
                                     param_hint="--budget")
        b = int(b)
    idx, pl = sample(lab.codes, b, levels=lab.levels, depth=depth, stage1=stage1, stage2=stage2, quality=quality,
                     p=p, tokens=tokens, replace=replace, seed=seed)
    from .buckets import bucket_ids

    bid = bucket_ids(lab.codes[idx], depth, lab.levels)
    meta = {"format": "hermes-mix", "labels": lab.files, "sources": dict(zip(lab.shards, lab.sources)),
            "budget": b, "depth": depth, "stage1": stage1, "stage2": stage2, "p": p, "replace": replace, "seed": seed,
            "levels": list(lab.levels), "model": lab.model.get("fingerprint")}
    shard_names = pa.DictionaryArray.from_arrays(pa.array(lab.shard[idx], pa.int32()), pa.array(lab.shards))
    table = pa.table({"shard": shard_names, "row": lab.rows[idx], "bucket": bid,
                      "l1": lab.codes[idx, 0].astype(np.int64)})
    table = table.replace_schema_metadata({"hermes": json.dumps(meta)})
    cols = {k: np.asarray(v) for k, v in pl.items()}
    prefix = unpack(cols["bucket"], depth, lab.levels)
    pt = pa.table({"l1": cols.pop("l1"), "bucket": cols.pop("bucket"),
                   **{f"c{i + 1}": prefix[:, i] for i in range(depth)}, **cols})
    if _suffix(plan) == ".csv":
        import pyarrow.csv as pcsv

        _atomic_path(plan, lambda tmp: pcsv.write_csv(pt, tmp))
    else:
        _atomic_path(plan, lambda tmp: pq.write_table(pt.replace_schema_metadata(
            {"hermes": json.dumps({**meta, "format": "hermes-mix-plan"})}), tmp))
    _atomic_path(out, lambda tmp: pq.write_table(table, tmp))
    drawn = int((cols["drawn"] > 0).sum())
    unit = f"{float(tokens[idx].sum()):,.0f} tokens in " if tokens is not None else ""
    click.echo(f"drew {unit}{idx.size:,} documents from {drawn:,} of {cols['size'].size:,} {depth_name(depth)} "
               f"buckets (stage1={stage1}, stage2={stage2}{', with replacement' if replace else ''}) -> {out}; "
               f"plan -> {plan}")
    l1, first = np.unique(pt.column("l1").to_numpy(), return_index=True)
    tgt, got, ex = cols["l1_target"][first], cols["l1_drawn"][first], cols["l1_exhausted"][first]
    w = cols["l1_weight"][first]
    dev = float(np.abs(got - tgt).max()) if got.size else 0.0
    line = (f"L1 buckets: {int((w > 0).sum()):,} with weight > 0; drawn vs target per L1 bucket: max |drawn - target| "
            f"= {dev:.3g} documents")
    if ex.any():
        ids = ", ".join(f"{int(b)} ({int(g):,} of target {t:,.1f})" for b, g, t in zip(l1[ex][:8], got[ex][:8], tgt[ex][:8]))
        line += (f"; {int(ex.sum()):,} exhausted (every eligible document drawn), their excess spread over the "
                 f"others by weight: {ids}{', ...' if ex.sum() > 8 else ''}")
    else:
        line += "; none exhausted"
    click.echo(line + " (per-L1 columns l1_weight, l1_eligible, l1_target, l1_drawn, l1_exhausted in the plan)")


# -------------------------------------------------------------------------------------- explore
@main.command("explore", short_help="Write an HTML page showing what the buckets hold.")
@click.argument("labels_paths", nargs=-1, required=True, metavar="LABELS...")
@click.option("--texts", "-t", required=True, multiple=True,
              help="Texts aligned with the labeled rows: .jsonl or .parquet (repeatable, read in order).")
@click.option("--text-field", required=True, help="JSON key or parquet column holding the text.")
@click.option("--out", "-o", required=True, type=click.Path(dir_okay=False), help="The HTML page to write.")
@click.option("--plan", default=None, type=click.Path(dir_okay=False),
              help="A `hermes mix` plan (.plan.parquet): stage-1 weights, targets and drawn counts as colour.")
@click.option("--embeddings", "-e", multiple=True, help="Embeddings in the labels' row order (repeatable), for "
              "each bucket's centroid cosine.")
@click.option("--column", default="embedding", show_default=True, help="Embedding column of parquet embeddings.")
@click.option("--tensor", default=None, help="Tensor name in .safetensors embeddings.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seeds the sample texts.")
@click.option("--title", default=None, help="Page title.")
@click.option("--progress/--no-progress", default=True, show_default=True)
def explore_cmd(labels_paths, texts, text_field, out, plan, embeddings, column, tensor, seed, title, progress):
    """Write one self-contained HTML page (no network, works from file://) showing the L1 -> L12 -> L123 tree
    of LABELS... with sizes, distinctive terms, sample texts and a term search."""
    from .explorer import explore

    labels = labels_paths[0] if len(labels_paths) == 1 else list(labels_paths)
    rep = explore(labels, list(texts), out, text_field=text_field, plan=plan,
                  embeddings=list(embeddings) or None, column=column, tensor=tensor, seed=seed, title=title,
                  progress=progress)
    shown = ", ".join(f"{s:,} {'L' + ''.join(map(str, range(1, d + 2)))}" for d, s in enumerate(rep.shown))
    click.echo(f"explored {rep.rows:,} documents ({shown} buckets on the page) in {rep.seconds:.1f} s -> {out} "
               f"({rep.bytes / 2**20:.1f} MB)")
    for note in rep.notes:
        click.echo(f"note: {note}")


# ----------------------------------------------------------------------------------------- demo
@main.command(short_help="Run the main job on the bundled data: fit, label, stats, mix, explore.")
@click.option("--out", "-o", default="hermes-demo", show_default=True, type=click.Path(file_okay=False),
              help="Directory for the model, labels, sample, plan and explorer page.")
@click.option("--data", default=None, type=click.Path(file_okay=False),
              help="The bundled data directory (default: examples/data of the current directory or of the "
                   "source checkout hermes runs from).")
def demo(out, data):
    """Fit, label, stats, mix and explore on the bundled 20k PyPI summaries, printing each command and its
    output, then the explorer page's path."""
    from .demo import run_demo

    run_demo(out, data)


# ----------------------------------------------------------------------------------------- info
@main.command(short_help="Model summary and build info (CUDA included).")
@click.argument("model_path", required=False, metavar="[MODEL]")
def info(model_path):
    """Summarize MODEL (when given) and how this hermes was built (CUDA included)."""
    import hermes

    if model_path:
        from .label import model_fingerprint

        m = hermes.load(model_path)
        w = "identity" if m.W is None else ("orthogonal" if m.is_orthogonal else "general")
        cells = math.prod(m.levels)
        rows = [("model", model_path), ("file size", f"{os.path.getsize(model_path):,} bytes"), ("d", m.d),
                ("levels", " x ".join(map(str, m.levels)) + f" ({cells:,} nominal L{''.join(map(str, range(1, m.L + 1)))} "
                 "cells)"), ("metric", m.metric), ("normalize", m.normalize), ("W", w),
                ("b", "zeros" if m.b is None else f"given (|b| = {float(np.linalg.norm(m.b)):.4g})"),
                ("assign path", "fused (W, b folded into the codebooks)" if m.fused else "explicit rotation"),
                ("fingerprint", model_fingerprint(m))]
        _echo_kv(rows)
        click.echo("")
    bi = hermes.build_info()
    rows = [(k, ", ".join(map(str, v)) if isinstance(v, list) else v) for k, v in bi.items() if v not in ("", None)]
    _echo_kv([("hermes", bi.get("version"))] + [r for r in rows if r[0] != "version"])


def _echo_kv(rows) -> None:
    w = max(len(str(k)) for k, _ in rows)
    for k, v in rows:
        click.echo(f"{str(k).ljust(w)}  {v}")


if __name__ == "__main__":  # pragma: no cover
    main()
