"""The hermes Model: codebooks, the Learned Semantic Transform (W, b), the metric, and save/load."""
from __future__ import annotations

import os

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ._backend import _C
from ._io import atomic_path
from ._validate import check_finite_array, check_metric, describe, is_torch

FORMAT = "hermes-model"
FORMAT_VERSION = 1
MAX_LEVELS = int(_C.MAX_LEVELS)  # the executors' limit (csrc/core kMaxLevels), defined once in C++
MAX_CODEWORDS = 65536
METRICS = {"l2": int(_C.METRIC_L2), "cos": int(_C.METRIC_COS)}  # the executors' metric codes (csrc/core)


def codeword_term(C, metric: str):
    """The per-codeword term of a stage's score: ``||c||^2`` (l2) or ``1 / ||c||`` (cos; 0 for a zero
    codeword, which then never wins a cosine argmax).

    With it, l2 assigns ``argmax_k 2 r.c_k - term_k`` (= argmin ||r - c_k||^2) and cos assigns
    ``argmax_k (r.c_k) * term_k``. ``C`` is ``[K, d]`` numpy or torch; the result ``[K]`` has its type,
    dtype and device. Used by the Model's kernel tables and by training, so both score alike.
    """
    n2 = (C * C).sum(1)
    if metric == "l2":
        return n2
    if is_torch(C):
        import torch

        n = n2.sqrt()
        return torch.where(n > 0, 1.0 / n.clamp_min(torch.finfo(n.dtype).tiny), torch.zeros_like(n))
    n = np.sqrt(n2)
    return np.divide(1.0, n, out=np.zeros_like(n), where=n > 0)


def _as_f32(fn: str, name: str, a, ndim: int) -> np.ndarray:
    if is_torch(a):
        a = a.detach().cpu().float().numpy()
    if not isinstance(a, np.ndarray):
        try:
            a = np.asarray(a)
        except Exception as e:  # pragma: no cover - exotic inputs
            raise TypeError(f"{fn}: {name} must be array-like, got {type(a).__name__}") from e
    if not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)):
        raise TypeError(f"{fn}: {name} must be a numeric array, got {describe(a)}")
    if a.ndim != ndim:
        raise ValueError(f"{fn}: {name} must be {ndim}-d, got shape {a.shape}")
    a = np.ascontiguousarray(a, dtype=np.float32)
    check_finite_array(fn, name, a)
    return a


@dataclass
class _Tables:
    """Per-model constants for the kernels (float32, computed in float64), on one device."""

    folded: bool
    offsets: list  # [L + 1] column offsets of each level in the concatenated codebooks
    M: object  # [d, sum K]: W^T C^T (folded) -- GEMM operand
    beta: object  # [sum K]: C b (folded)
    wtb: object  # [d]: W^T b
    bb: float  # ||b||^2
    cterm: list  # per level [K_l]: ||c||^2 (l2) or 1/||c|| (cos)
    T: list  # per level l: [C_j C_l^T for j < l] (folded)
    Ct: object  # [d, sum K]: C^T (explicit path GEMM operand)
    C: list  # per level [K_l, d] codebooks
    wt: object  # [d, d]: W^T (explicit path)
    bias: object  # [d]: b
    extra: dict = field(default_factory=dict)


class Model:
    """A trained HERMES labeler: h = normalize(W e + b), then greedy residual quantization of h.

    Args:
        codebooks: list of L arrays ``[K_l, d]`` (1 <= L <= 8, 1 <= K_l <= 65,536, levels may differ).
        W: ``[d, d]`` transform, ``None`` for the identity.
        b: ``[d]`` bias, ``None`` for zeros.
        metric: ``"cos"`` (each stage picks argmax_k (r . c_k) / ||c_k||, as in the paper) or ``"l2"``
            (argmin_k ||r - c_k||^2, classic RVQ). Ties go to the lowest codeword index.
            Under ``"cos"`` a zero codeword scores 0.
        normalize: L2-normalize ``W e + b`` before quantizing (a zero vector stays zero).
        ortho_tol: W counts as orthogonal, enabling the fused path that folds W and b into the codebooks,
            when ``max |W^T W - I| <= ortho_tol`` (elementwise, float64). Default 1e-4.
        max_table_bytes: the fused path stores the cross tables C_j C_l^T (j < l); above this many bytes
            hermes rotates explicitly instead. Default 256 MiB.

    Attributes: ``levels`` (tuple of K_l), ``d``, ``L``, ``metric``, ``normalize``, ``codebooks`` (tuple of
    float32 ``[K_l, d]``), ``W`` / ``b`` (float32 or None), ``is_orthogonal``, ``fused`` (fast path in use).
    """

    def __init__(self, codebooks, W=None, b=None, metric: str = "cos", normalize: bool = True, *,
                 ortho_tol: float = 1e-4, max_table_bytes: int = 256 << 20):
        fn = "Model"
        if is_torch(codebooks) or isinstance(codebooks, np.ndarray):
            if codebooks.ndim != 3:
                raise ValueError(f"{fn}: codebooks must be a list of [K_l, d] arrays, got {describe(codebooks)}")
            codebooks = list(codebooks)
        if not isinstance(codebooks, (list, tuple)):
            raise TypeError(f"{fn}: codebooks must be a list of [K_l, d] arrays, got {type(codebooks).__name__}")
        if len(codebooks) == 0:
            raise ValueError(f"{fn}: codebooks is an empty list; give 1 to {MAX_LEVELS} levels of [K_l, d] arrays")
        if len(codebooks) > MAX_LEVELS:
            raise ValueError(f"{fn}: codebooks has {len(codebooks)} levels; at most {MAX_LEVELS} are supported")
        cbs = [_as_f32(fn, f"codebooks[{i}]", c, 2) for i, c in enumerate(codebooks)]
        d = cbs[0].shape[1]
        if d < 1:
            raise ValueError(f"{fn}: codebooks[0] has dimension 0")
        for i, c in enumerate(cbs):
            if c.shape[1] != d:
                raise ValueError(f"{fn}: codebooks[{i}] has dimension {c.shape[1]}, codebooks[0] has {d}")
            if not 1 <= c.shape[0] <= MAX_CODEWORDS:
                raise ValueError(f"{fn}: codebooks[{i}] has {c.shape[0]} codewords; 1 to {MAX_CODEWORDS} allowed")
        check_metric(fn, metric)
        if W is not None:
            W = _as_f32(fn, "W", W, 2)
            if W.shape != (d, d):
                raise ValueError(f"{fn}: W must be [d, d] = [{d}, {d}], got {W.shape}")
        if b is not None:
            b = _as_f32(fn, "b", b, 1)
            if b.shape != (d,):
                raise ValueError(f"{fn}: b must be [d] = [{d}], got {b.shape}")
        self.codebooks = tuple(cbs)
        self.W = W
        self.b = b
        self.metric = metric
        self.normalize = bool(normalize)
        self.ortho_tol = float(ortho_tol)
        self.max_table_bytes = int(max_table_bytes)
        self.d = int(d)
        self.levels = tuple(int(c.shape[0]) for c in cbs)
        self.L = len(cbs)
        if W is None:
            self.is_orthogonal = True
        else:
            w = W.astype(np.float64)
            self.is_orthogonal = bool(np.abs(w.T @ w - np.eye(d)).max() <= self.ortho_tol)
        table_bytes = 4 * sum(self.levels[j] * self.levels[l] for l in range(self.L) for j in range(l))
        self.fused = self.is_orthogonal and table_bytes <= self.max_table_bytes
        self._tables: dict = {}

    def __repr__(self) -> str:
        return (f"hermes.Model(d={self.d}, levels={self.levels}, metric={self.metric!r}, "
                f"normalize={self.normalize}, W={'identity' if self.W is None else 'given'}, "
                f"b={'zeros' if self.b is None else 'given'}, fused={self.fused})")

    # ----------------------------------------------------------------------------------------- tables
    def _host_tables(self) -> _Tables:
        if "cpu" in self._tables:
            return self._tables["cpu"]
        d = self.d
        W = np.eye(d) if self.W is None else self.W.astype(np.float64)
        b = np.zeros(d) if self.b is None else self.b.astype(np.float64)
        C64 = [c.astype(np.float64) for c in self.codebooks]
        Call = np.concatenate(C64, axis=0)  # [sum K, d]
        offsets = [0]
        for K in self.levels:
            offsets.append(offsets[-1] + K)
        f32 = lambda a: np.ascontiguousarray(a, dtype=np.float32)  # noqa: E731
        cterm = [f32(codeword_term(c, self.metric)) for c in C64]
        T = [[f32(C64[j] @ C64[l].T) for j in range(l)] if self.fused else [] for l in range(self.L)]
        t = _Tables(
            folded=self.fused, offsets=offsets,
            M=f32(W.T @ Call.T), beta=f32(Call @ b), wtb=f32(W.T @ b), bb=float(b @ b),
            cterm=cterm, T=T, Ct=f32(Call.T), C=[f32(c) for c in C64], wt=f32(W.T), bias=f32(b))
        self._tables["cpu"] = t
        return t

    def _device_tables(self, device) -> _Tables:
        """The tables as torch tensors on `device`, uploaded once and cached per device."""
        import torch

        key = str(device)
        if key in self._tables:
            return self._tables[key]
        h = self._host_tables()
        up = lambda a: torch.from_numpy(a).to(device)  # noqa: E731
        t = _Tables(folded=h.folded, offsets=h.offsets, M=up(h.M), beta=up(h.beta), wtb=up(h.wtb), bb=h.bb,
                    cterm=[up(c) for c in h.cterm], T=[[up(x) for x in row] for row in h.T], Ct=up(h.Ct),
                    C=[up(c) for c in h.C], wt=up(h.wt), bias=up(h.bias))
        self._tables[key] = t
        return t

    # ------------------------------------------------------------------------------------- save/load
    def save(self, path) -> None:
        """Writes the model to ``path`` (safetensors + JSON metadata), atomically (temp file + rename)."""
        from safetensors.numpy import save_file

        from ._io import is_uri

        path = path if is_uri(path) else Path(path)  # a URI (s3://...) is published as a whole object
        tensors = {f"codebook.{i}": c for i, c in enumerate(self.codebooks)}
        if self.W is not None:
            tensors["W"] = self.W
        if self.b is not None:
            tensors["b"] = self.b
        meta = {
            "format": FORMAT, "format_version": str(FORMAT_VERSION), "d": str(self.d),
            "levels": json.dumps(list(self.levels)), "metric": self.metric,
            "normalize": json.dumps(self.normalize), "ortho_tol": repr(self.ortho_tol),
        }
        atomic_path(path, lambda tmp: save_file(tensors, tmp, metadata=meta))


def load(path) -> Model:
    """Reads a model written by :meth:`Model.save`. Errors name the file and what is wrong with it."""
    from safetensors import safe_open

    from ._io import download, is_uri

    if is_uri(path):  # s3://, gs://, ...: a local copy, read like a file
        import tempfile

        with tempfile.TemporaryDirectory(prefix="hermes-model-") as d:
            local = os.path.join(d, "model.safetensors")
            try:
                download(path, local, "hermes.load")
            except FileNotFoundError:
                raise FileNotFoundError(f"hermes.load: no model file at {path}") from None
            return load(local)
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"hermes.load: no model file at {path}")
    try:
        with safe_open(str(path), framework="numpy") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:
        raise ValueError(f"hermes.load: {path} is not a readable safetensors file ({e})") from e
    if meta.get("format") != FORMAT:
        raise ValueError(f"hermes.load: {path} is not a hermes model (metadata format={meta.get('format')!r})")
    if meta.get("format_version") != str(FORMAT_VERSION):
        raise ValueError(f"hermes.load: {path} has format_version {meta.get('format_version')!r}; "
                         f"this hermes reads version {FORMAT_VERSION}")
    d = _meta_value(path, meta, "d", _parse_count, "a positive integer such as 384")
    levels = _meta_value(path, meta, "levels", _parse_levels,
                         f"a JSON list of 1 to {MAX_LEVELS} integers in [1, {MAX_CODEWORDS}] such as [256, 256, 256]")
    metric = _meta_value(path, meta, "metric", lambda v: v if v in METRICS else None, "'cos' or 'l2'")
    normalize = _meta_value(path, meta, "normalize", {"true": True, "false": False}.get, "true or false")
    ortho_tol = _meta_value(path, meta, "ortho_tol", _parse_tol, "a finite number >= 0", default="1e-4")
    expected = {f"codebook.{i}" for i in range(len(levels))} | {"W", "b"}
    unknown = sorted(set(tensors) - expected)
    if unknown:
        raise ValueError(f"hermes.load: {path} holds tensor(s) {unknown[:5]} that a {len(levels)}-level model does "
                         f"not have (expected codebook.0..codebook.{len(levels) - 1}, W, b)")
    for k, t in tensors.items():
        if t.dtype.kind != "f":
            raise ValueError(f"hermes.load: {path}: tensor {k!r} has dtype {t.dtype}; model tensors are floats")
    cbs = []
    for i, K in enumerate(levels):
        name = f"codebook.{i}"
        if name not in tensors:
            raise ValueError(f"hermes.load: {path} is missing tensor {name!r} (metadata says {len(levels)} levels)")
        if tensors[name].shape != (K, d):
            raise ValueError(f"hermes.load: {path}: tensor {name!r} has shape {tensors[name].shape}, "
                             f"metadata says ({K}, {d})")
        cbs.append(tensors[name])
    W, b = tensors.get("W"), tensors.get("b")
    if W is not None and W.shape != (d, d):
        raise ValueError(f"hermes.load: {path}: tensor 'W' has shape {W.shape}, expected ({d}, {d})")
    if b is not None and b.shape != (d,):
        raise ValueError(f"hermes.load: {path}: tensor 'b' has shape {b.shape}, expected ({d},)")
    try:
        return Model(cbs, W=W, b=b, metric=metric, normalize=normalize, ortho_tol=ortho_tol)
    except ValueError as e:  # e.g. NaN in a codebook: name the file
        raise ValueError(f"hermes.load: {path}: {e}") from None


def _meta_value(path, meta: dict, key: str, parse, expected: str, default: str | None = None):
    """meta[key] parsed strictly by ``parse`` (None: malformed); errors name the file and the key."""
    if key not in meta:
        if default is None:
            raise ValueError(f"hermes.load: {path} has no metadata key {key!r} (expected {expected})")
        raw = default
    else:
        raw = meta[key]
    try:
        v = parse(raw)
    except (ValueError, TypeError):
        v = None
    if v is None:
        raise ValueError(f"hermes.load: {path}: metadata {key!r} is {raw!r}; expected {expected}")
    return v


def _parse_count(raw: str):
    return int(raw) if re.fullmatch(r"[1-9][0-9]*", raw, re.ASCII) else None


def _parse_levels(raw: str):
    v = json.loads(raw)
    ok = isinstance(v, list) and 1 <= len(v) <= MAX_LEVELS and all(
        type(k) is int and 1 <= k <= MAX_CODEWORDS for k in v)
    return [int(k) for k in v] if ok else None


def _parse_tol(raw: str):
    v = float(raw) if re.fullmatch(r"[0-9.eE+-]+", raw, re.ASCII) else None
    return v if v is not None and math.isfinite(v) and v >= 0 else None


