"""Shared fixtures: the device list (CPU always, CUDA when usable) and the bundled real data."""
from pathlib import Path

import numpy as np
import pytest

import hermes

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "examples" / "data"

_CUDA_SKIP = "needs a CUDA device and a CUDA build of hermes: " + (hermes.build_info()["cuda_unavailable_reason"] or "")


def pytest_collection_modifyitems(config, items):
    if hermes.cuda_available():
        return
    skip = pytest.mark.skip(reason=_CUDA_SKIP)
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(params=["numpy", "torch-cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def device(request):
    """Where the input lives: a numpy array, a torch CPU tensor, or a torch CUDA tensor."""
    return request.param


def to_device(x: np.ndarray, device: str):
    """Moves a numpy array to the `device` fixture's kind."""
    if device == "numpy":
        return x
    import torch

    t = torch.from_numpy(np.ascontiguousarray(x))
    return t.cuda() if device == "cuda" else t


def child_env() -> dict:
    """Environment for a child Python that imports the same hermes as this process (installed or source tree).

    Run the child with a cwd outside the repository: from the repo root, `python -m`/`-c` would import the
    uncompiled source tree of an installed-wheel checkout.
    """
    import os

    env = dict(os.environ)
    root = str(Path(hermes.__file__).resolve().parents[1])
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def to_numpy(x):
    return x if isinstance(x, np.ndarray) else x.cpu().numpy()


@pytest.fixture(scope="session")
def real_embeddings():
    """[20000, 384] float16 L2-normalized MiniLM embeddings of PyPI summaries (bundled)."""
    return np.load(DATA / "pypi_minilm_20k.f16.npy")
