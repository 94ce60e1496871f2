"""build_info(), the single version, importing without a GPU, and the error a CUDA input gets when CUDA can't run."""
import importlib.metadata
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

import hermes
from hermes import _backend, reference

REPO = Path(__file__).resolve().parents[1]
ARCH = re.compile(r"^\d+a?(-real|-virtual)?$")


def fake_cuda_tensor(shape, dtype=None):
    """A tensor whose device is cuda:0 but which owns no memory, so a CPU-only torch can make it: enough to reach
    the point where hermes decides whether its CUDA path can run."""
    import torch
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        t = torch.empty(shape, dtype=dtype or torch.float32, device="cuda")
    assert t.device.type == "cuda"
    return t


def tiny_model(d=5):
    rng = np.random.default_rng(0)
    return hermes.Model([rng.standard_normal((3, d)), rng.standard_normal((2, d))], metric="l2")


# ------------------------------------------------------------------------------------------ build_info
def test_build_info_keys_and_types():
    info = hermes.build_info()
    assert info["version"] == hermes.__version__
    assert isinstance(info["cuda"], bool)
    archs = info["cuda_architectures"]
    assert isinstance(archs, list) and all(isinstance(a, str) and ARCH.match(a) for a in archs), archs
    assert isinstance(info["compiler"], str) and info["compiler"] not in ("", "unknown")
    assert isinstance(info["openmp"], bool)
    assert isinstance(info["blas"], str) and info["blas"]
    assert isinstance(info["cuda_available"], bool)
    assert isinstance(info["cuda_unavailable_reason"], str)
    json.dumps(info)  # plain data: printable in bug reports and CI logs


def test_build_info_cuda_fields_agree():
    info = hermes.build_info()
    if info["cuda"]:
        assert info["cuda_architectures"], "a CUDA build must list the architectures it carries"
        assert re.match(r"^\d+\.\d+", info["cuda_version"]), info["cuda_version"]
        assert re.match(r"^\d+\.\d+", info["cuda_runtime"]), info["cuda_runtime"]
    else:
        assert info["cuda_architectures"] == []
        assert info["cuda_available"] is False
    # Usable exactly when there is no reason it isn't.
    assert info["cuda_available"] == hermes.cuda_available() == (info["cuda_unavailable_reason"] == "")


def test_cuda_build_carries_the_release_architectures_and_ptx():
    """A CUDA build's architectures are "-real" (SASS) or "-virtual" (PTX) entries; the default release set is
    sm_75..sm_90 plus compute_90 PTX. Developer builds may narrow it (scripts/dev_build.sh uses 75)."""
    info = hermes.build_info()
    if not info["cuda"]:
        pytest.skip("CPU-only build: no CUDA architectures to check")
    archs = info["cuda_architectures"]
    assert len(set(archs)) == len(archs)
    if os.environ.get("HERMES_EXPECT_RELEASE_ARCHS"):
        assert archs == ["75-real", "80-real", "86-real", "89-real", "90-real", "90-virtual"]


# -------------------------------------------------------------------------------------------- version
def test_version_has_one_source():
    from hermes import _version

    assert hermes.__version__ == _version.__version__
    assert re.match(r"^\d+\.\d+\.\d+", hermes.__version__)
    pyproject = (REPO / "pyproject.toml").read_text()
    project = pyproject.split("[project]", 1)[1].split("\n[", 1)[0]
    assert not re.search(r"^version\s*=", project, re.M), "pyproject.toml must not hard-code the version"
    assert re.search(r'^dynamic\s*=\s*\[[^\]]*"version"', project, re.M)
    assert 'input = "hermes/_version.py"' in pyproject


def test_installed_metadata_matches_version():
    try:
        dist = importlib.metadata.distribution("hermes-rvq")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("hermes-rvq is not installed (source-tree run): no wheel metadata to compare")
    files = [dist.locate_file(f) for f in dist.files or () if f.name == "__init__.py" and f.parent.name == "hermes"]
    if not files or Path(files[0]).resolve() != Path(hermes.__file__).resolve():
        pytest.skip("the imported hermes is the source tree, not the installed hermes-rvq")
    assert dist.version == hermes.__version__


# ------------------------------------------------------------------------------ no GPU, no driver, no toolkit
def test_import_and_cpu_path_without_cuda_toolkit_or_devices():
    """A child process with no CUDA toolkit on PATH/LD_LIBRARY_PATH and no visible device imports hermes and labels
    on the CPU, matching the float64 reference."""
    pkg_root = str(Path(hermes.__file__).resolve().parents[1])
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CUDA", "LD_LIBRARY_PATH", "PYTHON"))}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if "cuda" not in p.lower())
    env["CUDA_VISIBLE_DEVICES"] = ""
    env["PYTHONPATH"] = pkg_root
    code = (
        "import json, numpy as np, hermes\n"
        "rng = np.random.default_rng(3)\n"
        "x = rng.standard_normal((257, 13)).astype(np.float32)\n"
        "books = [rng.standard_normal((K, 13)).astype(np.float32) for K in (7, 5, 3)]\n"
        "codes = hermes.assign_codes(x, hermes.Model(books, metric='cos'))\n"
        "np.save('codes.npy', codes); np.save('x.npy', x); np.savez('books.npz', *books)\n"
        "print(json.dumps({'file': hermes.__file__, 'available': hermes.cuda_available(),\n"
        "                  'reason': hermes.build_info()['cuda_unavailable_reason']}))\n"
    )
    with tempfile.TemporaryDirectory() as tmp:
        r = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr
        out = json.loads(r.stdout.strip().splitlines()[-1])
        x = np.load(Path(tmp) / "x.npy")
        books = list(np.load(Path(tmp) / "books.npz").values())
        codes = np.load(Path(tmp) / "codes.npy")
    assert Path(out["file"]).resolve() == Path(hermes.__file__).resolve()
    assert out["available"] is False and out["reason"], "no device is visible, so CUDA must be unavailable, with a reason"
    np.testing.assert_array_equal(codes, reference.assign(x, books, metric="cos"))


# ---------------------------------------------------------------------- a CUDA input when CUDA can't run
@pytest.mark.parametrize("fn", ["assign_codes", "transform"])
def test_cuda_input_gets_clear_error_when_cuda_is_unavailable(fn):
    if hermes.cuda_available():
        pytest.skip("CUDA is usable here: the unavailable path cannot be reached without faking the driver")
    reason = hermes.build_info()["cuda_unavailable_reason"]
    x = fake_cuda_tensor((4, 5))
    with pytest.raises(RuntimeError) as e:
        getattr(hermes, fn)(x, tiny_model())
    msg = str(e.value)
    assert msg.startswith(f"{fn}: x is a CUDA tensor") and "unavailable" in msg
    assert reason in msg
    # The reason names which of the three it is.
    assert re.search(r"driver|device|built without CUDA", reason), reason


def test_cpu_only_build_error_names_the_build(monkeypatch):
    """As a wheel built with HERMES_CUDA=OFF reports it: the reason says the build has no CUDA, not the driver."""
    monkeypatch.setattr(_backend, "cuda_compiled", lambda: False)
    assert hermes.cuda_available() is False
    x = fake_cuda_tensor((4, 5))
    with pytest.raises(RuntimeError, match=r"assign_codes: .*built without CUDA"):
        hermes.assign_codes(x, tiny_model())


def test_cuda_bfloat16_input_is_refused_before_any_device_work():
    if hermes.cuda_available():
        pytest.skip("CUDA is usable here")
    import torch

    with pytest.raises(RuntimeError, match="CUDA path is unavailable"):
        hermes.assign_codes(fake_cuda_tensor((3, 5), torch.bfloat16), tiny_model())
