"""Shared fixtures: the device list (CPU always, CUDA when usable), the bundled real data, a real S3 server (moto's
server mode on localhost) and helpers to start Ray nodes as processes the tests own."""
import os
import socket
import subprocess
import sys
import time
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


# ------------------------------------------------------------------------------------- object storage
def _moto_or_skip():
    pytest.importorskip("moto", reason="moto is not installed (pip install 'moto[server]>=5.2.5')")
    pytest.importorskip("flask", reason="moto's server mode needs flask (pip install 'moto[server]>=5.2.5')")
    return pytest.importorskip("boto3", reason="boto3 is not installed (pip install 'moto[server]>=5.2.5')")


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """A moto S3 server on a free localhost port, the AWS_* settings pointing at it (in os.environ, so child
    processes started with :func:`child_env` reach it too), and a bucket 'hermes'; yields a boto3 client."""
    boto3 = _moto_or_skip()
    port = free_port()
    log = tmp_path_factory.mktemp("moto") / "server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                                stdout=out, stderr=subprocess.STDOUT)
    old = {}
    try:
        deadline = time.time() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if time.time() > deadline or proc.poll() is not None:
                    pytest.fail(f"the moto server did not start: {log.read_text()[-2000:]}")
                time.sleep(0.2)
        env = dict(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1",
                   AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}")
        old = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        boto3.client("s3").create_bucket(Bucket="hermes")
        yield boto3.client("s3")
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        proc.terminate()
        proc.wait(timeout=30)


def s3_keys(client, prefix: str, markers: bool = False) -> list:
    """Object keys under prefix in the bucket 'hermes' (without the empty directory markers pyarrow keeps for its
    directories, unless ``markers``)."""
    return sorted(o["Key"] for o in client.list_objects_v2(Bucket="hermes", Prefix=prefix).get("Contents", [])
                  if markers or not o["Key"].endswith("/"))


def s3_put(client, local, key: str) -> str:
    """Uploads the local file to the bucket 'hermes' under key; returns its s3:// URI."""
    client.upload_file(str(local), "hermes", key)
    return f"s3://hermes/{key}"


# ------------------------------------------------------------------------------------------------ Ray
def ray_shards_and_model(root: Path, n: int, split: int, row_group_size: int):
    """The Ray tests' inputs in ``root``: the first n bundled embeddings as a.npy (rows [0, split)) and b.parquet
    (the rest, fixed_size_list rows in row groups of ``row_group_size``), and a small residual k-means model
    m.safetensors (16 x 8 x 8, fitted on the first 2,000 rows). Returns (x [n, d] float16, model)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    import hermes

    x = np.load(DATA / "pypi_minilm_20k.f16.npy")[:n]
    np.save(root / "a.npy", x[:split])
    pq.write_table(pa.table({"embedding": pa.FixedSizeListArray.from_arrays(pa.array(x[split:].reshape(-1)),
                                                                             x.shape[1])}), root / "b.parquet",
                   row_group_size=row_group_size)
    model = hermes.fit(x[:2000].astype(np.float32), (16, 8, 8), method="residual_kmeans", progress=False, seed=0)
    model.save(root / "m.safetensors")
    return x, model


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ray_env() -> dict:
    """:func:`child_env` for the Ray nodes (`ray start`) and drivers (`--address`) of one test: token
    authentication with a token of their own. Ray (2.60) turns token authentication on for `ray start --head`
    whenever ~/.ray/auth_token exists (a local `ray.init()` writes one, and sets RAY_AUTH_MODE=token in its own
    environment), but never for a driver given an explicit address: without one setting for both, whether the
    driver may connect would depend on what ran before, on the machine and in this process."""
    import secrets

    env = child_env()
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32))
    env.pop("RAY_AUTH_TOKEN_PATH", None)
    return env


def ray_node_args() -> list:
    """Distinct ports for one Ray node of several on this machine (the per-node agents default to fixed ports)."""
    return ["--node-manager-port", str(free_port()), "--object-manager-port", str(free_port()),
            "--metrics-export-port", str(free_port()), "--dashboard-agent-listen-port", str(free_port()),
            "--dashboard-agent-grpc-port", str(free_port()), "--runtime-env-agent-port", str(free_port()),
            "--min-worker-port", "0", "--max-worker-port", "0"]


def ray_command() -> Path:
    """The `ray` command next to this Python (the test is skipped without it)."""
    exe = Path(sys.executable).with_name("ray")
    if not exe.exists():
        pytest.skip(f"the ray command is not installed next to {sys.executable}")
    return exe


def start_ray_head(env: dict, num_cpus: int) -> tuple:
    """Starts `ray start --head --block` as a process group this test owns (stop it with :func:`stop_ray_nodes`),
    in a new short directory under /tmp (its cwd and Ray's --temp-dir: Ray's socket paths must stay short), and
    waits until its GCS answers. Returns (process, address, directory)."""
    import tempfile

    tmp = tempfile.mkdtemp(prefix="hr", dir="/tmp")
    port = free_port()
    proc = subprocess.Popen([str(ray_command()), "start", "--head", "--block", "--port", str(port), "--num-cpus",
                             str(num_cpus), "--include-dashboard=false", "--temp-dir", tmp, "--disable-usage-stats",
                             *ray_node_args()], env=env, cwd=tmp, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while True:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                break
        if proc.poll() is not None or time.time() > deadline:
            stop_ray_nodes([proc], tmp)
            pytest.fail(f"ray start --head did not start (exit status {proc.returncode})")
        time.sleep(0.5)
    return proc, f"127.0.0.1:{port}", tmp


def stop_ray_nodes(procs: list, temp_dir=None) -> None:
    """Stops the `ray start --block` process groups, last started first: SIGTERM, then SIGKILL to the whole group
    after 5 s (a node that has run jobs takes half a minute to stop gracefully; its state lives in its --temp-dir,
    which nothing reuses); then removes ``temp_dir`` (the one :func:`start_ray_head` made)."""
    for p in reversed(procs):
        try:
            os.killpg(p.pid, 15)
        except ProcessLookupError:
            pass
    for p in reversed(procs):
        try:
            p.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(p.pid, 9)
        except ProcessLookupError:
            pass
        p.wait()
    if temp_dir is not None:
        import shutil

        shutil.rmtree(temp_dir, ignore_errors=True)
