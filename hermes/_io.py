"""Safe file output: atomic writes (temp file beside the target, then rename, so no reader and no rerun after a
killed process ever sees a half-written file) and the output-path guard every writing command calls first
(an output is never one of the inputs, never another output, never a file of a kind its writer does not own)."""
from __future__ import annotations

import errno
import json
import os
import re
import struct
import tempfile
from pathlib import Path
from typing import Callable, Iterable

__all__ = ["is_uri", "open_uri", "atomic_uri", "download", "atomic_path", "user_os_error", "OutputError", "publish_mode",
           "fsync_path", "same_file", "check_outputs", "Output", "owns_hermes_safetensors", "owns_hermes_parquet",
           "owns_image", "owns_html", "owns_csv_header", "owns_json_format",
           "IMAGE_SUFFIXES"]


# ------------------------------------------------------------------------------- URIs (pyarrow fs)
_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def is_uri(path) -> bool:
    """A location on a pyarrow filesystem (``s3://``, ``gs://``, ``hdfs://``, ``file://``, ...), not a local path."""
    return isinstance(path, str) and bool(_URI.match(path))


def open_uri(uri: str, fn: str = "hermes"):
    """(pyarrow filesystem, path inside it) for ``uri``. S3 endpoints and credentials come from the usual
    settings (``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ..., or ``?endpoint_override=host:port&scheme=http``
    in the URI)."""
    import pyarrow.fs as pafs

    try:
        return pafs.FileSystem.from_uri(uri)
    except Exception as e:
        raise ValueError(f"{fn}: cannot open {uri}: {e}") from None


def uri_join(uri: str, *names: str) -> str:
    """``uri`` + ``/name``... (query parameters, if any, stay at the end)."""
    base, q, query = uri.partition("?")
    return "/".join([base.rstrip("/"), *names]) + (q + query)


def download(uri: str, local, fn: str = "hermes") -> None:
    """Copies the object ``uri`` to the local file ``local``."""
    import pyarrow.fs as pafs

    fs, path = open_uri(uri, fn)
    pafs.copy_files(path, str(local), source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())


def atomic_uri(uri: str, write: Callable[[str], object], fn: str = "hermes") -> None:
    """Publishes an object atomically: ``write(tmp_path)`` fills a local temporary file, which is uploaded to a
    temporary object ``.<name>.<random>.tmp`` beside ``uri`` and then moved onto ``uri`` (on object stores a
    server-side copy: readers see the old object or the complete new one, never a part). The temporary object
    is removed on any error."""
    import posixpath
    import uuid

    import pyarrow.fs as pafs

    fs, path = open_uri(uri, fn)
    parent, name = posixpath.split(path.rstrip("/"))
    tmp_obj = posixpath.join(parent, f".{name}.{uuid.uuid4().hex[:12]}.tmp")
    with tempfile.TemporaryDirectory(prefix="hermes-") as d:
        local = os.path.join(d, name)
        write(local)
        try:
            if parent and fs.type_name not in ("s3", "gcs"):  # object stores have no directories to create
                fs.create_dir(parent, recursive=True)
            with open(local, "rb") as src, fs.open_output_stream(tmp_obj) as dst:
                while block := src.read(8 << 20):
                    dst.write(block)
            fs.move(tmp_obj, path)
        except BaseException as e:
            try:
                fs.delete_file(tmp_obj)
            except Exception:
                pass
            if isinstance(e, OSError):
                raise OSError(e.errno or errno.EIO, f"could not write {uri}: {e}") from None
            raise


def publish_mode(path) -> None:
    """Gives a mkstemp file (0600) the mode a plain open() would have (0666 minus the umask)."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(path, 0o666 & ~mask)


def fsync_path(path) -> None:
    """Flushes a written file to disk before it is renamed into place."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class OutputError(OSError):
    """An OS error while writing an output (errno, message, the user's path); str() is the one-line message."""

    def __str__(self) -> str:
        return str(self.strerror)


_OS_ERROR_IN_TEXT = re.compile(r"\(os error (\d+)\)")  # how Rust libraries (safetensors) report an OS error


def user_os_error(e: BaseException, path, tmp=None, only_tmp: bool = False) -> OSError | None:
    """``e`` as an OSError naming the user's ``path`` (not the temporary file beside it), or None when ``e`` is
    no OS error (an OSError, or a library error carrying one, like safetensors' "(os error 28)"), or with
    ``only_tmp`` when it is not about the temporary file (e.g. an input that vanished while being read)."""
    path = Path(path)
    if only_tmp and str(tmp) not in str(e) and getattr(e, "filename", None) != str(tmp):
        return None
    if isinstance(e, OSError):
        code, why = e.errno, e.strerror or str(e).replace(str(tmp), str(path))
        if code is None and str(path) in str(e):
            return None  # already names the path
    else:
        m = _OS_ERROR_IN_TEXT.search(str(e))
        if not m:
            return None
        code = int(m.group(1))
        why = os.strerror(code)
    if isinstance(e, IsADirectoryError) or path.is_dir():
        why = "it is a directory"
    return OutputError(code or errno.EIO, f"could not write {path}: {why}", str(path))


def atomic_path(path, write: Callable[[str], object]) -> None:
    """Calls ``write(tmp_path)`` on a temporary file next to ``path``, then fsyncs it, gives it the usual
    permissions and renames it to ``path``. On any error (or interrupt) the temporary file is removed; an
    OSError (no space, no permission, a directory in the way) is raised naming ``path``, not the temp file."""
    if is_uri(path):
        return atomic_uri(path, write)
    path = Path(path)
    tmp = None
    try:
        if path.is_dir():
            raise IsADirectoryError(errno.EISDIR, "it is a directory")
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        write(tmp)
        fsync_path(tmp)
        publish_mode(tmp)
        os.replace(tmp, path)
    except BaseException as e:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
        err = user_os_error(e, path, tmp)
        if err is not None:
            raise err from None
        raise


# ------------------------------------------------------------------------------------- path guard
def same_file(a, b) -> bool:
    """True when paths a and b name one file: the same inode when both exist (hard and symbolic links,
    ``..``, relative and absolute spellings), else the same fully resolved path."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return Path(a).expanduser().resolve() == Path(b).expanduser().resolve()


class Output:
    """One path a command writes: ``what`` names it in messages (``--out``), ``owns(path)`` says whether an
    existing file there is one this output may replace (``None``: it must not exist yet); ``is_dir`` for an
    output directory (which may exist; its files are checked by the command)."""

    def __init__(self, what: str, path, owns: Callable[[Path], bool] | None = None, *, kind: str = "",
                 is_dir: bool = False):
        path = path if path is None or is_uri(path) else Path(path)
        self.what, self.path, self.owns, self.kind, self.is_dir = what, path, owns, kind, is_dir


def check_outputs(fn: str, outputs: Iterable[Output], inputs: Iterable[tuple[str, object]] = (),
                  overwrite: bool = False) -> None:
    """Refuses, before anything is written, an output that would destroy an input or another output.

    Args:
        fn: the command or function named in messages (``hermes fit``).
        outputs: the :class:`Output` paths the command will write.
        inputs: ``(what, path)`` for every file or directory the command reads, ``what`` worded to follow
            "is also" (``"the input INPUT"``); for a directory, the directory itself and its files.
        overwrite: the caller's explicit permission to replace an existing file of another kind (it never
            permits replacing an input or another output).

    Raises:
        ValueError naming both options and the path when an output is the same file as an input (compared
        by inode and by resolved path, so links and ``..`` spellings do not slip through) or as another
        output; when a file output exists as a directory, or exists and is not of the kind it writes.
    """
    outputs = [o for o in outputs if o.path is not None]
    inputs = [(w, p if is_uri(p) else Path(p)) for w, p in inputs if p is not None]
    for o in [o for o in outputs if is_uri(o.path)]:  # object storage: the same URI is the same object
        for what, p in inputs:
            if str(p).rstrip("/") == o.path.rstrip("/"):
                raise ValueError(f"{fn}: {o.what} {o.path} is also {what} {p}; refusing to overwrite an input "
                                 f"(choose another {o.what})")
    outputs = [o for o in outputs if not is_uri(o.path)]
    inputs = [(w, p) for w, p in inputs if not is_uri(p)]
    for o in outputs:
        for what, p in inputs:
            if same_file(o.path, p):
                raise ValueError(f"{fn}: {o.what} {o.path} is also {what} {p}; refusing to overwrite an "
                                 f"input (choose another {o.what})")
    for i, a in enumerate(outputs):
        for b in outputs[i + 1:]:
            if same_file(a.path, b.path):
                raise ValueError(f"{fn}: {a.what} and {b.what} are the same file {a.path}; give them different "
                                 f"paths")
    for o in outputs:
        if o.is_dir:
            if o.path.exists() and not o.path.is_dir():
                raise ValueError(f"{fn}: {o.what} {o.path} exists and is not a directory")
            continue
        if not os.path.lexists(o.path):
            continue
        if o.path.is_dir():
            raise ValueError(f"{fn}: {o.what} {o.path} is a directory; give a file path")
        if not overwrite and (o.owns is None or not o.owns(o.path)):
            kind = f" ({o.kind})" if o.kind else ""
            raise ValueError(f"{fn}: {o.what} {o.path} exists and is not a file this command writes{kind}; "
                             f"refusing to replace it (remove it or choose another path)")


# ------------------------------------------------------------------------------ kind predicates
def _safetensors_metadata(path: Path) -> dict | None:
    """The ``__metadata__`` of a safetensors file read from its header (no tensor is read), or None."""
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) != 8:
                return None
            (n,) = struct.unpack("<Q", head)
            if n > (100 << 20):
                return None
            header = json.loads(f.read(n))
        meta = header.get("__metadata__") if isinstance(header, dict) else None
        return meta if isinstance(meta, dict) else {}
    except (OSError, ValueError, UnicodeDecodeError):
        return None


def owns_hermes_safetensors(fmt: str) -> Callable[[Path], bool]:
    """A predicate: the file is a safetensors file whose metadata ``format`` is ``fmt`` (e.g. a hermes model)."""
    return lambda path: (_safetensors_metadata(path) or {}).get("format") == fmt


def owns_hermes_parquet(*formats: str) -> Callable[[Path], bool]:
    """A predicate: the file is a parquet file whose ``hermes`` schema metadata has one of ``formats``."""

    def owns(path: Path) -> bool:
        try:
            import pyarrow.parquet as pq

            kv = pq.read_schema(path).metadata or {}
            return json.loads(kv[b"hermes"]).get("format") in formats
        except Exception:
            return False

    return owns


def owns_json_format(*formats: str) -> Callable[[Path], bool]:
    """A predicate: the file holds a JSON object whose ``format`` is one of ``formats``."""

    def owns(path: Path) -> bool:
        try:
            obj = json.loads(Path(path).read_text())
            return isinstance(obj, dict) and obj.get("format") in formats
        except (OSError, ValueError, UnicodeDecodeError):
            return False

    return owns


def owns_csv_header(prefix: str) -> Callable[[Path], bool]:
    """A predicate: the file's first line, with quotes removed, starts with ``prefix`` (a CSV hermes wrote)."""

    def owns(path: Path) -> bool:
        try:
            with open(path, "rb") as f:
                first = f.readline(4096).decode("utf-8", "replace").replace('"', "").strip()
            return first.startswith(prefix)
        except OSError:
            return False

    return owns


def owns_html(path: Path) -> bool:
    """The file is an HTML page (its first non-blank bytes open ``<!doctype html`` or ``<html``): what a command
    that writes a page (``hermes explore --out``) may replace."""
    try:
        with open(path, "rb") as f:
            head = f.read(512).lstrip().lower()
    except OSError:
        return False
    return head.startswith(b"<!doctype html") or head.startswith(b"<html")


_IMAGE_MAGIC = {".png": [b"\x89PNG\r\n\x1a\n"], ".pdf": [b"%PDF"], ".jpg": [b"\xff\xd8\xff"], ".jpeg": [b"\xff\xd8\xff"],
                ".svg": [b"<?xml", b"<svg"], ".eps": [b"%!PS"], ".ps": [b"%!PS"],
                ".tif": [b"II*\x00", b"MM\x00*"], ".tiff": [b"II*\x00", b"MM\x00*"], ".webp": [b"RIFF"]}
IMAGE_SUFFIXES = tuple(_IMAGE_MAGIC)


def owns_image(path: Path) -> bool:
    """The file is an image of the kind its suffix says (by its first bytes)."""
    magic = _IMAGE_MAGIC.get(Path(path).suffix.lower())
    if not magic:
        return False
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError:
        return False
    return any(head.startswith(m) for m in magic)
