"""Explore: one self-contained HTML page showing what the buckets of a labeling hold.

:func:`explore` reads a ``hermes label`` output and the documents' texts (and optionally their embeddings and a
``hermes mix`` plan) in one streaming pass and writes a single HTML file: all JS and CSS inline, no network
request, readable from ``file://``. The page shows the L1 -> L12 -> L123 tree as a zoomable treemap sized by
documents; per bucket its size, share and number of children, its most distinctive terms, sample texts, its
centroid cosine (with embeddings) and its plan weight, target and drawn counts (with a plan); a search box that
finds buckets by term; and the bucket-size distribution per depth.

Bounded whatever the corpus size (the page of 230M documents is no larger than that of 230k):

- memory grows with the occupied buckets, never with the documents: exact sizes per occupied bucket (sparse
  counts merged in amortized batches), one sum vector per occupied bucket for the centroid cosine, and a
  seeded bottom-k sample (reservoir sampling: each document gets a key from a hash of its row and the seed;
  a bucket keeps its R lowest keys, a uniform sample without replacement) of R1 = 256 texts per L1 bucket and
  R2 = 16 per L12 bucket. L123 buckets take their samples from their L12 parent's (a uniform sample of the
  child too). Corpus term frequencies come from a uniform sample of at most ``corpus_docs`` documents;
- the page holds at most ``max_children`` children per node (the rest become one "others" entry), a fixed
  number of samples per bucket, each cut to ``text_chars`` characters; if the page would still exceed
  ``max_bytes`` the samples are cut shorter.

Distinctive terms are a class-TF-IDF (as BERTopic's c-TF-IDF, on document frequencies): for a bucket b with a
sample of m texts, term t scores ``(m_t / m) * log(1 + A / f_t)``, where m_t counts the sample texts holding t,
f_t the corpus documents holding t, and A = N / (occupied buckets at b's depth) the mean bucket size. Terms held
by a single sample text are ignored once the sample has 4 or more texts, and so are terms held by more than
10% of the corpus (COMMON).
"""
from __future__ import annotations

import heapq
import html
import json
import math
import os
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ._io import Output, atomic_path, check_outputs

__all__ = ["explore", "ExploreReport"]

RESERVOIR = (256, 16)  # texts kept per bucket at depth 1 and 2 (samples and term statistics)
MAX_CHILDREN = (1024, 32, 8)  # L1 buckets on the page; children shown per L1 bucket; per L12 bucket
SAMPLES = (8, 5, 2)  # sample texts shown per L1, L12, L123 bucket
TERMS = (10, 8, 5)  # distinctive terms shown per L1, L12, L123 bucket
KEEP_CHARS = 300  # characters of a text kept in memory
TEXT_CHARS = 200  # characters of a sample text on the page (cut shorter if the page would exceed max_bytes)
MAX_BYTES = 12 * 2 ** 20
CORPUS_DOCS = 1_000_000  # documents whose terms give the corpus frequencies (all when N is at most this)
GENERATOR = '<meta name="generator" content="hermes explore">'
MAX_DEPTH = 3  # depths shown (L1, L12, L123)
COMMON = 0.1  # terms held by more than this share of the corpus are never distinctive
_SUM_BYTES = 1 << 30  # per-depth limit on the centroid sums; a deeper depth over it gets no centroid cosine

_TOKEN = re.compile(r"[^\W\d_](?:[\w+#]|[-.](?=\w))*")
_STOP = frozenset("""
a about above after again against all also am an and any are as at be because been before being below between
both but by can could did do does doing down during each etc few for from further get gets had has have having
he her here hers him his how i if in into is it its itself just me more most my no nor not now of off on once
only or other our ours out over own same she should so some such than that the their theirs them then there
these they this those through to too under until up upon us use used uses using very via was we were what when
where which while who whom why will with within without would you your yours
""".split())


@dataclass
class ExploreReport:
    """What :func:`explore` wrote: the page path and size, the documents read, and the buckets shown per depth."""

    out: Path
    rows: int
    bytes: int
    levels: tuple
    occupied: list  # occupied buckets per depth (L1, L12, ...)
    shown: list  # buckets on the page per depth (others entries not counted)
    text_chars: int
    seconds: float
    notes: list = field(default_factory=list)


# ------------------------------------------------------------------------------------- streaming parts
def _keys(rows: np.ndarray, seed: int, stream: int) -> np.ndarray:
    """Uniform [0, 1) keys, a splitmix64 hash of (row, seed, stream): the same for a row whatever the batching."""
    with np.errstate(over="ignore"):
        z = rows.astype(np.uint64) + np.uint64((seed * 0x9E3779B97F4A7C15 + stream * 0xD1B54A32D192ED03)
                                               & 0xFFFFFFFFFFFFFFFF)
        z = (z + np.uint64(0x9E3779B97F4A7C15))
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


class _Counts:
    """Exact documents per occupied bucket id; per-batch counts are merged when they outgrow the state."""

    def __init__(self):
        self.ids = np.zeros(0, np.int64)
        self.n = np.zeros(0, np.int64)
        self._pend: list = []
        self._pend_size = 0

    def add(self, ids: np.ndarray) -> None:
        u, c = np.unique(ids, return_counts=True)
        self._pend.append((u, c.astype(np.int64)))
        self._pend_size += u.size
        if self._pend_size > max(self.ids.size, 1 << 16):
            self.merge()

    def merge(self) -> None:
        if not self._pend:
            return
        ids = np.concatenate([self.ids] + [u for u, _ in self._pend])
        n = np.concatenate([self.n] + [c for _, c in self._pend])
        self.ids, inv = np.unique(ids, return_inverse=True)
        self.n = np.bincount(inv.ravel(), weights=n, minlength=self.ids.size).astype(np.int64)
        self._pend, self._pend_size = [], 0


class _Sums:
    """Sum of the normalized embeddings per occupied bucket id (float32), merged like :class:`_Counts`."""

    def __init__(self, d: int, max_bytes: int):
        self.d, self.max_bytes = d, max_bytes
        self.ids = np.zeros(0, np.int64)
        self.s = np.zeros((0, d), np.float32)
        self._pend: list = []
        self._pend_size = 0
        self.dropped = False

    def add(self, ids: np.ndarray, x: np.ndarray) -> None:
        if self.dropped:
            return
        u, inv = np.unique(ids, return_inverse=True)
        self._pend.append((u, _segment_sum(inv.ravel(), x, u.size)))
        self._pend_size += u.size
        if self._pend_size > max(self.ids.size, 1 << 14):
            self.merge()

    def merge(self) -> None:
        if self.dropped or not self._pend:
            return
        ids = np.concatenate([self.ids] + [u for u, _ in self._pend])
        s = np.concatenate([self.s] + [v for _, v in self._pend])
        self._pend, self._pend_size = [], 0
        self.ids, inv = np.unique(ids, return_inverse=True)
        if self.ids.size * self.d * 4 > self.max_bytes:
            self.dropped, self.ids, self.s = True, np.zeros(0, np.int64), np.zeros((0, self.d), np.float32)
            return
        self.s = _segment_sum(inv.ravel(), s, self.ids.size)


def _segment_sum(inv: np.ndarray, x: np.ndarray, n: int) -> np.ndarray:
    """out[g] = sum of the rows x[i] with inv[i] == g, [n, d] float32 (torch's index_add_, BLAS-free and fast)."""
    import torch

    out = torch.zeros((n, x.shape[1]), dtype=torch.float32)
    out.index_add_(0, torch.from_numpy(np.ascontiguousarray(inv, dtype=np.int64)),
                   torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)))
    return out.numpy()


class _Reservoir:
    """Per bucket id, the R documents with the lowest keys (a seeded uniform sample without replacement).

    Candidates (key below their bucket's current R-th lowest key) are buffered and merged when the buffer
    outgrows the state, so memory is about 2 R per occupied bucket, plus the kept texts.
    """

    def __init__(self, R: int):
        self.R = R
        self.ids = np.zeros(0, np.int64)
        self.keys = np.zeros(0, np.float64)
        self.rows = np.zeros(0, np.int64)
        self.leaf = np.zeros(0, np.int64)
        self._thr_ids = np.zeros(0, np.int64)
        self._thr = np.zeros(0, np.float64)
        self.texts: dict = {}
        self._pend: list = []
        self._pend_size = 0

    def add(self, ids, keys, rows, leaf, texts) -> None:
        if self._thr_ids.size:
            pos = np.minimum(np.searchsorted(self._thr_ids, ids), self._thr_ids.size - 1)
            thr = np.where(self._thr_ids[pos] == ids, self._thr[pos], np.inf)
            sel = np.flatnonzero(keys < thr)
        else:
            sel = np.arange(ids.size)
        if not sel.size:
            return
        self._pend.append((ids[sel], keys[sel], rows[sel], leaf[sel]))
        for i in sel.tolist():
            self.texts[int(rows[i])] = texts[i]
        self._pend_size += sel.size
        if self._pend_size > max(self.ids.size, 1 << 16):
            self.merge()

    def merge(self) -> None:
        if not self._pend:
            return
        parts = list(zip(*self._pend))
        ids, keys, rows, leaf = (np.concatenate([a] + list(p)) for a, p in
                                 zip((self.ids, self.keys, self.rows, self.leaf), parts))
        self._pend, self._pend_size = [], 0
        order = np.lexsort((keys, ids))
        ids, keys, rows, leaf = ids[order], keys[order], rows[order], leaf[order]
        start = np.r_[True, ids[1:] != ids[:-1]] if ids.size else np.zeros(0, bool)
        first = np.flatnonzero(start)
        rank = np.arange(ids.size) - np.repeat(first, np.diff(np.r_[first, ids.size]))
        keep = rank < self.R
        self.ids, self.keys, self.rows, self.leaf = ids[keep], keys[keep], rows[keep], leaf[keep]
        full = rank == self.R - 1
        self._thr_ids, self._thr = ids[full], keys[full]
        self.texts = {r: self.texts[r] for r in self.rows.tolist()}

    def groups(self) -> dict:
        """{bucket id: (start, stop)} into the (id, key)-sorted state (call after the final merge)."""
        u, start = np.unique(self.ids, return_index=True)
        stop = np.r_[start[1:], self.ids.size]
        return {int(b): (int(a), int(z)) for b, a, z in zip(u, start, stop)}


class _Take:
    """take(n): the next n items of a stream of chunks (lists or arrays), across chunk boundaries."""

    def __init__(self, chunks, what: str):
        self.chunks, self.what = chunks, what
        self.buf, self.pos, self.done = None, 0, False

    def take(self, n: int):
        parts, need = [], n
        while need:
            if self.buf is None or self.pos >= len(self.buf):
                self.buf, self.pos = next(self.chunks, None), 0
                if self.buf is None:
                    self.done = True
                    break
                continue
            piece = self.buf[self.pos:self.pos + need]
            self.pos += len(piece)
            need -= len(piece)
            parts.append(piece)
        return parts, n - need

    def exhausted(self) -> bool:
        while self.buf is not None and self.pos >= len(self.buf):
            self.buf, self.pos = next(self.chunks, None), 0
        return self.buf is None


def _text_chunks(fn: str, paths: list, field: str, batch: int):
    """Lists of texts (str) from .jsonl files (key ``field``) and parquet files (column ``field``), in order."""
    import pyarrow.parquet as pq

    for p in paths:
        ext = p.suffix.lower()
        if ext == ".jsonl":
            out = []
            with open(p, encoding="utf-8") as f:
                for i, line in enumerate(f):
                    if not line.strip():
                        continue
                    try:
                        obj = json.loads(line)
                    except ValueError as e:
                        raise ValueError(f"{fn}: texts file {p} line {i + 1} is not valid JSON: {e}") from None
                    if not isinstance(obj, dict) or field not in obj:
                        keys = list(obj)[:8] if isinstance(obj, dict) else type(obj).__name__
                        raise ValueError(f"{fn}: texts file {p} line {i + 1} has no field {field!r} "
                                         f"(it has {keys}); name the field with text_field (CLI: --text-field)")
                    v = obj[field]
                    out.append("" if v is None else (v if isinstance(v, str) else str(v))[:KEEP_CHARS])
                    if len(out) == batch:
                        yield out
                        out = []
            if out:
                yield out
        elif ext == ".parquet":
            try:
                pf = pq.ParquetFile(p)
                names = pf.schema_arrow.names
            except Exception as e:
                raise ValueError(f"{fn}: texts file {p} is not a readable parquet file: {e}") from None
            if field not in names:
                raise ValueError(f"{fn}: texts file {p} has no column {field!r} (columns: {names[:12]}); name "
                                 f"it with text_field (CLI: --text-field)")
            for b in pf.iter_batches(batch_size=batch, columns=[field]):
                yield ["" if v is None else (v if isinstance(v, str) else str(v))[:KEEP_CHARS]
                       for v in b.column(0).to_pylist()]
        else:
            raise ValueError(f"{fn}: texts file {p} must be .jsonl or .parquet")


def _tokens(text: str) -> set:
    """The distinct terms of a text: lowercased words (letters first; digits, +, #, inner - and . allowed) of 2 to
    32 characters, stopwords removed."""
    return {t for t in _TOKEN.findall(text.lower()) if 1 < len(t) <= 32} - _STOP


# ------------------------------------------------------------------------------------------ inputs
def _paths(fn: str, what: str, value) -> list:
    if value is None:
        return []
    items = [value] if isinstance(value, (str, os.PathLike)) else list(value)
    out = []
    for v in items:
        p = Path(v)
        if not p.is_file():
            raise FileNotFoundError(f"{fn}: {what}: no such file: {p}")
        out.append(p)
    if not out:
        raise ValueError(f"{fn}: {what}: no files given")
    return out


def _label_meta(fn: str, labels):
    from .label import LABEL_FORMAT, _label_files, _read_meta

    files = [f for f, _ in _label_files(fn, labels)]
    levels, model, rows = None, None, []
    for f in files:
        if not f.is_file():
            raise FileNotFoundError(f"{fn}: {f} (listed in the manifest) does not exist")
        meta, n = _read_meta(f)
        if meta is None or meta.get("format") != LABEL_FORMAT:
            raise ValueError(f"{fn}: {f} is not a hermes labels file (no 'hermes' schema metadata, or unreadable)")
        lv = tuple(meta["model"]["levels"])
        if levels is None:
            levels, model = lv, meta["model"]
        elif lv != levels or meta["model"].get("fingerprint") != model.get("fingerprint"):
            raise ValueError(f"{fn}: {f} was labeled by another model (levels {lv}) than {files[0]} (levels {levels})")
        rows.append(n)
    return files, levels, model, rows


def _code_chunks(files, L: int, batch: int):
    import pyarrow.parquet as pq

    cols = [f"c{l + 1}" for l in range(L)]
    for f in files:
        for b in pq.ParquetFile(f).iter_batches(batch_size=batch, columns=cols):
            yield np.stack([b.column(i).to_numpy().astype(np.int64) for i in range(L)], axis=1)


def _emb_chunks(fn: str, paths: list, column: str, tensor, batch: int):
    from .readers import open_shard

    d = None
    for p in paths:
        s = open_shard(p, column=column, tensor=tensor, fn=fn)
        if d is not None and s.d != d:
            raise ValueError(f"{fn}: embeddings {p} have dimension {s.d}, the earlier files {d}")
        d = s.d
        for _, x in s.batches(batch):
            yield np.asarray(x, dtype=np.float32)
        s.close()


def _read_plan(fn: str, plan, levels, model: dict, counts):
    """The plan's per-bucket arrays at its depth, checked against the labels."""
    import pyarrow.parquet as pq

    p = Path(plan)
    if not p.is_file():
        raise FileNotFoundError(f"{fn}: plan: no such file: {p}")
    try:
        t = pq.read_table(p)
    except Exception as e:
        raise ValueError(f"{fn}: plan {p} is not a readable parquet file: {e}") from None
    need = {"l1", "bucket", "size", "mass", "target", "drawn"}
    if not need <= set(t.column_names):
        raise ValueError(f"{fn}: plan {p} is not a hermes mix plan: it lacks the columns "
                         f"{sorted(need - set(t.column_names))}")
    meta = {}
    raw = (t.schema.metadata or {}).get(b"hermes")
    if raw:
        try:
            meta = json.loads(raw)
        except ValueError:
            meta = {}
    depth = int(meta.get("depth") or sum(1 for c in t.column_names if re.fullmatch(r"c\d+", c)))
    if not 1 <= depth <= len(levels):
        raise ValueError(f"{fn}: plan {p} has depth {depth}; the labels have {len(levels)} levels")
    if meta.get("levels") and tuple(meta["levels"]) != tuple(levels):
        raise ValueError(f"{fn}: plan {p} was drawn from labels with levels {tuple(meta['levels'])}, these have "
                         f"{tuple(levels)}")
    if meta.get("model") and model.get("fingerprint") and meta["model"] != model["fingerprint"]:
        raise ValueError(f"{fn}: plan {p} was drawn from labels of model {meta['model']}, these are of model "
                         f"{model['fingerprint']}")
    col = {c: t.column(c).to_numpy() for c in need}
    ids, size = col["bucket"].astype(np.int64), col["size"].astype(np.int64)
    c = counts[depth - 1]
    pos = np.minimum(np.searchsorted(c.ids, ids), max(c.ids.size - 1, 0))
    bad = np.flatnonzero((c.ids.size == 0) | (c.ids[pos] != ids) | (c.n[pos] != size)) if ids.size else ids
    if bad.size:
        i = int(bad[0])
        raise ValueError(f"{fn}: plan {p} row {i}: bucket {int(ids[i])} holds {int(size[i])} documents in the "
                         f"plan but {int(c.n[pos[i]]) if c.ids.size and c.ids[pos[i]] == ids[i] else 0} in these "
                         f"labels: the plan was drawn from other labels")
    out = {"depth": depth, "meta": {k: meta.get(k) for k in ("budget", "stage1", "stage2", "replace", "seed")
                                    if k in meta}, "by_depth": {}}
    for d in range(1, depth + 1):
        div = math.prod(levels[d:depth])
        anc = ids // div
        u, inv = np.unique(anc, return_inverse=True)
        sums = [np.bincount(inv.ravel(), weights=col[k].astype(np.float64), minlength=u.size)
                for k in ("mass", "target", "drawn")]
        out["by_depth"][d] = (u, *sums)
    return out


# ------------------------------------------------------------------------------------------ the page
def _cut(text: str, chars: int) -> str:
    t = " ".join(text.split())
    return t if len(t) <= chars else t[:chars - 1].rstrip() + "\u2026"


def _terms(docs: list, k: int, df: Counter, scale: float, A: float, size: int, N: int) -> str:
    """The k most distinctive terms of a bucket from the texts of its sample (class-TF-IDF, module doc)."""
    m = len(docs)
    if not m:
        return ""
    tf = Counter()
    for toks in docs:
        tf.update(toks)
    floor = 2 if m >= 4 else 1
    scored = []
    common, get = COMMON * N, df.get
    for t, c in tf.items():
        if c < floor:
            continue
        f = max(get(t, 0) * scale, c * size / m, 1.0)
        if f <= common:
            scored.append(((c / m) * math.log1p(A / f), t))
    return " ".join(t for _, t in heapq.nsmallest(k, scored, key=lambda st: (-st[0], st[1])))


def _histogram(n: np.ndarray) -> dict:
    if not n.size:
        return {"edges": [1, 2], "counts": [0], "q": {}}
    top = int(np.ceil(np.log2(int(n.max()) + 1)))
    edges = [1 << i for i in range(max(top, 0) + 1)]
    if len(edges) < 2:
        edges = [1, 2]
    counts, _ = np.histogram(n, bins=np.array(edges, dtype=np.float64) - 0.5)
    q = np.quantile(n, [0.1, 0.5, 0.9])
    return {"edges": edges, "counts": counts.tolist(),
            "q": {"min": int(n.min()), "p10": float(q[0]), "median": float(q[1]), "mean": float(n.mean()),
                  "p90": float(q[2]), "max": int(n.max())}}


def _path_of(bid: int, depth: int, levels) -> str:
    parts = []
    for l in range(depth - 1, -1, -1):
        parts.append(bid % levels[l])
        bid //= levels[l]
    return ".".join(str(c) for c in reversed(parts))


def _lookup(ids: np.ndarray, vals, key: int):
    if not ids.size:
        return None
    i = int(np.searchsorted(ids, key))
    if i < ids.size and ids[i] == key:
        return [float(v[i]) for v in vals]
    return None


def _build(st: dict, text_chars: int) -> dict:
    """The page's data: a flat node list (node 0 is the corpus) with children, samples and statistics."""
    levels, D, N = st["levels"], st["D"], st["N"]
    counts, sums, res, plan = st["counts"], st["sums"], st["res"], st["plan"]
    texts, text_ix = [], {}

    def text_id(row: int, store: dict) -> int:
        s = _cut(store[row], text_chars)
        if s not in text_ix:
            text_ix[s] = len(texts)
            texts.append(s)
        return text_ix[s]

    nodes = [{"id": "", "d": 0, "n": N}]
    tcache = st["terms"]
    root_ch, root_rest = _top_children(counts[0].ids, counts[0].n, MAX_CHILDREN[0])
    frontier = [(0, root_ch, root_rest)]
    shown = [0] * D
    kids_of = st["kids"]
    for depth in range(1, D + 1):
        nxt = []
        c = counts[depth - 1]
        for parent, ch, rest in frontier:
            idx = []
            for bid in ch.tolist():
                n = int(c.n[np.searchsorted(c.ids, bid)])
                node = {"id": _path_of(bid, depth, levels), "d": depth, "n": n}
                k = kids_of[depth - 1].get(bid, 0) if depth - 1 < len(kids_of) else 0
                if k:
                    node["k"] = k
                docs = _sample_docs(st, depth, bid)
                ch2 = rest2 = None
                if depth < D:
                    ch2, rest2 = _top_children_of(st, depth + 1, bid)
                if docs:
                    store = res[depth - 1].texts if depth - 1 < len(res) else res[depth - 2].texts
                    if (depth, bid) not in tcache:
                        _cache_terms(st, depth, bid, n, docs, store, ch2 if depth == len(res) else None)
                    if tcache[(depth, bid)]:
                        node["t"] = tcache[(depth, bid)]
                    node["s"] = [text_id(r, store) for r in docs[:SAMPLES[depth - 1]]]
                    node["m"] = len(docs)
                if depth <= len(sums) and sums[depth - 1] is not None and not sums[depth - 1].dropped:
                    s = sums[depth - 1]
                    i = int(np.searchsorted(s.ids, bid))
                    node["c"] = round(float(np.linalg.norm(s.s[i].astype(np.float64))) / n, 5)
                if plan and depth in plan["by_depth"]:
                    hit = _lookup(plan["by_depth"][depth][0], plan["by_depth"][depth][1:], bid)
                    node["w"], node["tg"], node["dr"] = (round(hit[0], 8), round(hit[1], 3), int(hit[2])) \
                        if hit else (0.0, 0.0, 0)
                nodes.append(node)
                idx.append(len(nodes) - 1)
                shown[depth - 1] += 1
                if depth < D:
                    nxt.append((len(nodes) - 1, ch2, rest2))
            nodes[parent]["ch"] = idx
            if rest[0]:
                o = {"n": int(rest[1]), "b": int(rest[0])}
                if plan and depth in plan["by_depth"]:
                    o.update(_plan_rest(plan["by_depth"][depth], rest[2]))
                nodes[parent]["o"] = o
        frontier = nxt
    names = [_depth_name(d) for d in range(1, len(levels) + 1)]
    data = {
        "title": st["title"], "n": N, "levels": list(levels), "depth": D, "names": names,
        "occupied": [int(c.ids.size) for c in counts[:D]], "nominal": [math.prod(levels[:d]) for d in range(1, D + 1)],
        "hist": [_histogram(c.n) for c in counts[:D]],
        "reservoir": list(RESERVOIR[:max(D - 1, 1)]), "seed": st["seed"],
        "has_cos": any(s is not None and not s.dropped for s in sums), "texts": texts, "nodes": nodes,
        "sources": st["sources"], "notes": st["notes"],
    }
    if plan:
        data["plan"] = {"depth": plan["depth"], **plan["meta"]}
    return data, shown


def _cache_terms(st: dict, depth: int, bid: int, n: int, docs: list, store: dict, children) -> None:
    """Terms of bucket bid into st["terms"], and of its shown children whose samples come from its sample
    (the texts are tokenized once, and not kept)."""
    counts, N, df, scale = st["counts"], st["N"], st["df"], st["df_scale"]
    toks = {r: _tokens(store[r]) for r in docs}
    A = N / max(counts[depth - 1].ids.size, 1)
    st["terms"][(depth, bid)] = _terms([toks[r] for r in docs], TERMS[depth - 1], df, scale, A, n, N)
    if children is None:
        return
    c = counts[depth]
    A = N / max(c.ids.size, 1)
    for child in children.tolist():
        cdocs = _sample_docs(st, depth + 1, child)
        size = int(c.n[np.searchsorted(c.ids, child)])
        st["terms"][(depth + 1, child)] = _terms([toks[r] for r in cdocs], TERMS[depth], df, scale, A, size, N)


def _plan_rest(by, rest_ids) -> dict:
    """Plan sums over the hidden ("others") children."""
    u, mass, target, drawn = by
    m = np.isin(u, rest_ids, assume_unique=True)
    return {"w": round(float(mass[m].sum()), 8), "tg": round(float(target[m].sum()), 3), "dr": int(drawn[m].sum())}


def _depth_name(depth: int) -> str:
    return "L" + "".join(str(i) for i in range(1, depth + 1))


def _top_children(ids: np.ndarray, n: np.ndarray, cap: int):
    """(the cap largest ids, by size then id; (hidden count, hidden documents, hidden ids))."""
    order = np.lexsort((ids, -n))
    top, restix = order[:cap], order[cap:]
    return ids[top], (int(restix.size), int(n[restix].sum()), np.sort(ids[restix]))


def _top_children_of(st: dict, depth: int, parent: int):
    c = st["counts"][depth - 1]
    K = st["levels"][depth - 1]
    lo, hi = np.searchsorted(c.ids, [parent * K, (parent + 1) * K])
    return _top_children(c.ids[lo:hi], c.n[lo:hi], MAX_CHILDREN[depth - 1])


def _sample_docs(st: dict, depth: int, bid: int) -> list:
    """Rows of the bucket's sample, lowest key first: its own reservoir, or its parent's members that fall in it."""
    res, groups, D, levels = st["res"], st["groups"], st["D"], st["levels"]
    if depth - 1 < len(res):
        a, z = groups[depth - 1].get(bid, (0, 0))
        return res[depth - 1].rows[a:z].tolist()
    r = res[depth - 2]
    parent = bid // levels[depth - 1]
    a, z = groups[depth - 2].get(parent, (0, 0))
    leaf = r.leaf[a:z] // math.prod(levels[depth:D])
    return r.rows[a:z][leaf == bid].tolist()


def _owns_page(path: Path) -> bool:
    """An existing file explore may replace: a page it wrote (its generator tag near the top)."""
    try:
        with open(path, "rb") as f:
            return GENERATOR.encode() in f.read(4096)
    except OSError:
        return False


def _render(data: dict) -> str:
    from ._explore_page import PAGE

    blob = json.dumps(data, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    blob = blob.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    head, tail = PAGE.split("__DATA__")
    return head.replace("__TITLE__", html.escape(data["title"])) + blob + tail


# ------------------------------------------------------------------------------------------ public
def explore(labels, texts, out, *, text_field: str, plan=None, embeddings=None, seed: int = 0,
            title: str | None = None, column: str = "embedding", tensor: str | None = None,
            corpus_docs: int = CORPUS_DOCS, max_bytes: int = MAX_BYTES, batch_size: int = 65536,
            progress: bool = True) -> ExploreReport:
    """Writes one self-contained HTML page (inline JS/CSS, no network request) showing what the buckets hold.

    Args:
        labels: a ``hermes label`` output directory (or its parquet files), N rows of codes ``[N, L]``.
        texts: a ``.jsonl`` or ``.parquet`` file, or a list of them read in order, holding the N texts in the
            labels' row order (the shards in manifest order, rows in order).
        out: the HTML file to write (atomically; it may not be one of the inputs).
        text_field: the JSON key or parquet column holding the text.
        plan: a ``hermes mix`` plan (``.plan.parquet``) drawn from these labels: per bucket its mass P (its
            L1 ancestors' sum is the stage-1 weight), target and drawn counts.
        embeddings: ``[N, d]`` embeddings (``.npy`` / ``.safetensors`` / ``.parquet``, or a list in order) for
            each bucket's centroid cosine (mean cosine of its members to their normalized mean direction).
        seed: seeds the samples (the same seed gives the same page).
        title: the page title (default: the labels path).
        column, tensor: where parquet / safetensors embeddings hold the vectors.
        corpus_docs: the corpus term frequencies come from a uniform sample of this many documents.
        max_bytes: the page's size limit; the sample texts are cut shorter until it fits.
        batch_size: rows read at a time.
        progress: show a progress bar on stderr.

    Returns:
        an :class:`ExploreReport`.

    Raises:
        ValueError / FileNotFoundError naming the argument, file and row: texts or embeddings with fewer or more
        rows than the labels, a missing text field, a plan drawn from other labels, an output that is an input.
    """
    fn = "explore"
    t0 = time.perf_counter()
    if not isinstance(text_field, str) or not text_field:
        raise ValueError(f"{fn}: text_field must be a non-empty string, got {text_field!r}")
    for name, v, lo in (("seed", seed, None), ("corpus_docs", corpus_docs, 1), ("max_bytes", max_bytes, 1 << 16),
                        ("batch_size", batch_size, 1)):
        if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or (lo is not None and v < lo):
            raise ValueError(f"{fn}: {name} must be an integer{f' >= {lo}' if lo else ''}, got {v!r}")
    files, levels, model, file_rows = _label_meta(fn, labels)
    text_paths = _paths(fn, "texts", texts)
    emb_paths = _paths(fn, "embeddings", embeddings) if embeddings is not None else []
    out = Path(out)
    if out.suffix.lower() not in (".html", ".htm"):
        raise ValueError(f"{fn}: out must be an .html file, got {out}")
    inputs = [("the labels file", f) for f in files] + [("the texts file", p) for p in text_paths] + \
        [("the embeddings file", p) for p in emb_paths] + ([("the plan", Path(plan))] if plan is not None else [])
    check_outputs(fn, [Output("out", out, _owns_page, kind="a hermes explore page")], inputs)
    L, N = len(levels), int(sum(file_rows))
    D = min(L, MAX_DEPTH)
    res_depths = max(D - 1, 1)
    counted = min(L, D + 1)  # one depth beyond the page's deepest, for its buckets' child counts
    counts = [_Counts() for _ in range(counted)]
    res = [_Reservoir(RESERVOIR[d]) for d in range(res_depths)]
    tstream = _Take(_text_chunks(fn, text_paths, text_field, batch_size), "texts")
    estream = _Take(_emb_chunks(fn, emb_paths, column, tensor, batch_size), "embeddings") if emb_paths else None
    sums: list = []
    df: Counter = Counter()
    q = min(1.0, corpus_docs / max(N, 1))
    df_docs = 0
    from tqdm.auto import tqdm

    g0 = 0
    with tqdm(total=N, unit="docs", unit_scale=True, desc="explore", disable=not progress, dynamic_ncols=True) as bar:
        for codes in _code_chunks(files, L, batch_size):
            n = codes.shape[0]
            parts, got = tstream.take(n)
            if got < n:
                raise ValueError(f"{fn}: texts {', '.join(map(str, text_paths))} hold {g0 + got:,} texts, the "
                                 f"labels {N:,} rows")
            batch_texts = [t for part in parts for t in part]
            rows = np.arange(g0, g0 + n, dtype=np.int64)
            ids = [codes[:, 0].copy()]
            for d in range(1, counted):
                ids.append(ids[-1] * levels[d] + codes[:, d])
            for d in range(counted):
                counts[d].add(ids[d])
            if estream is not None:
                xparts, got = estream.take(n)
                if got < n:
                    raise ValueError(f"{fn}: embeddings {', '.join(map(str, emb_paths))} hold {g0 + got:,} rows, "
                                     f"the labels {N:,}")
                x = np.concatenate(xparts) if len(xparts) > 1 else xparts[0]
                if not np.isfinite(x).all():
                    i = int(np.flatnonzero(~np.isfinite(x).all(1))[0])
                    raise ValueError(f"{fn}: embeddings row {g0 + i} contains NaN or Inf")
                norm = np.linalg.norm(x, axis=1, keepdims=True)
                x = x / np.where(norm > 0, norm, 1)
                if not sums:
                    sums = [_Sums(x.shape[1], _SUM_BYTES) for _ in range(D)]
                for d in range(D):
                    sums[d].add(ids[d], x)
            keys = _keys(rows, seed, 0)
            leaf = ids[D - 1]
            for d in range(res_depths):
                res[d].add(ids[d], keys, rows, leaf, batch_texts)
            if q >= 1.0:
                pick = range(n)
            else:
                pick = np.flatnonzero(_keys(rows, seed, 1) < q).tolist()
            for i in pick:
                df.update(_tokens(batch_texts[i]))
            df_docs += len(pick)
            g0 += n
            bar.update(n)
    if g0 != N:
        raise ValueError(f"{fn}: the labels files hold {g0:,} rows, their metadata {N:,}")
    if not tstream.exhausted():
        raise ValueError(f"{fn}: texts {', '.join(map(str, text_paths))} hold more texts than the labels' {N:,} rows "
                         f"(texts must be aligned with the labeled rows)")
    if estream is not None and not estream.exhausted():
        raise ValueError(f"{fn}: embeddings {', '.join(map(str, emb_paths))} hold more rows than the labels' {N:,}")
    for c in counts:
        c.merge()
    for s in sums:
        s.merge()
    for r in res:
        r.merge()
    notes = []
    for d, s in enumerate(sums):
        if s.dropped:
            notes.append(f"no centroid cosine at {_depth_name(d + 1)}: its sums would exceed "
                         f"{_SUM_BYTES >> 20} MiB")
    kids = []
    for d in range(counted - 1):
        par = counts[d + 1].ids // levels[d + 1]
        u, k = np.unique(par, return_counts=True)
        kids.append(dict(zip(u.tolist(), k.tolist())))
    plan_data = _read_plan(fn, plan, levels, model, counts) if plan is not None else None
    st = {"levels": levels, "D": D, "N": N, "counts": counts, "sums": sums, "res": res, "plan": plan_data,
          "groups": [r.groups() for r in res], "kids": kids, "terms": {}, "df": df,
          "df_scale": N / max(df_docs, 1), "seed": int(seed),
          "title": title or f"hermes explore: {labels if isinstance(labels, (str, os.PathLike)) else files[0].parent}",
          "sources": {"labels": [str(f) for f in files], "texts": [str(p) for p in text_paths],
                      "embeddings": [str(p) for p in emb_paths], "plan": str(plan) if plan is not None else None},
          "notes": notes}
    chars = TEXT_CHARS
    while True:
        st["notes"] = notes + ([f"sample texts cut to {chars} characters to keep the page under {max_bytes:,} "
                                f"bytes"] if chars < TEXT_CHARS else [])
        data, shown = _build(st, chars)
        page = _render(data).encode("utf-8")
        if len(page) <= max_bytes:
            break
        if chars <= 24:
            raise ValueError(f"{fn}: the page needs {len(page):,} bytes even with samples cut to {chars} "
                             f"characters; raise max_bytes (now {max_bytes:,})")
        chars = max(24, int(chars * 0.7))
    notes = st["notes"]
    atomic_path(out, lambda tmp: Path(tmp).write_bytes(page))
    return ExploreReport(out=out, rows=N, bytes=len(page), levels=tuple(levels),
                         occupied=[int(c.ids.size) for c in counts[:D]], shown=shown, text_chars=chars,
                         seconds=time.perf_counter() - t0, notes=notes)
