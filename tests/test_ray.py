"""Labeling on Ray (hermes label --engine ray): a local Ray started by the tests, the bundled data, real workers.

Codes equal single-process `hermes label` row for row; a worker killed mid-run (SIGKILL, Ray restarts it and
retries its range) still yields every row exactly once; a rerun keeps finished shards; a two-node cluster on one
machine (`ray start --head` + `ray start --address` with its own resources) labels on both nodes.
"""
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

import hermes
from hermes.label import read_labels

from conftest import child_env, ray_command, ray_env, ray_node_args, ray_shards_and_model, start_ray_head, stop_ray_nodes

ray = pytest.importorskip("ray", reason="ray is not installed (optional: pip install 'ray[data]', hermes-rvq[ray])")
pytest.importorskip("ray.data", reason="Ray Data is not installed (pip install 'ray[data]')")

ARMED = os.path.join(tempfile.gettempdir(), f"hermes-ray-fault-{os.getpid()}")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Two shards of the bundled embeddings (npy + parquet), a small model, single-process labels, a local Ray."""
    root = tmp_path_factory.mktemp("ray")
    x, model = ray_shards_and_model(root, 6000, 3500, 700)
    hermes.label([root / "a.npy", root / "b.parquet"], root / "m.safetensors", root / "local", progress=False,
                 device="cpu")
    # Workers put the driver's cwd first on their path (from the repository root: the uncompiled source tree).
    # Start Ray elsewhere, with the workers importing the hermes under test.
    cwd = os.getcwd()
    os.chdir(root)
    env = {"PYTHONPATH": child_env()["PYTHONPATH"], "HERMES_RAY_FAULT_KILL_ONCE": ARMED}
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, runtime_env={"env_vars": env})
    try:
        yield dict(root=root, x=x, model=model, local=read_labels(root / "local"))
    finally:
        ray.shutdown()
        os.chdir(cwd)


def _run_cli(*args):
    from click.testing import CliRunner

    from hermes.cli import main

    r = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    return r.output


def _same_as_local(world, out):
    lab, ref = read_labels(out), world["local"]
    np.testing.assert_array_equal(lab.codes, ref.codes)
    np.testing.assert_array_equal(lab.rows, ref.rows)
    np.testing.assert_array_equal(lab.shard, ref.shard)
    man = json.loads((out / "manifest.json").read_text())
    ref_man = json.loads((world["root"] / "local" / "manifest.json").read_text())
    assert man["shards"] == ref_man["shards"] and man["rows"] == 6000
    assert sorted(os.listdir(out)) == ["a.parquet", "b.parquet", "manifest.json"]  # no parts, no temporaries
    return lab


def test_ray_cli_equals_local_and_rerun_keeps_shards(world):
    root = world["root"]
    out = _run_cli("label", "--engine", "ray", "--model", root / "m.safetensors", "--out", root / "ray",
                   "--batch-size", "1000", "--concurrency", "2", "--no-progress", root / "a.npy", root / "b.parquet")
    assert "labeled 2 shard(s) (6,000 rows" in out and "ray: 1 node(s) labeled 6,000 rows" in out
    _same_as_local(world, root / "ray")
    a_time = os.stat(root / "ray" / "a.parquet").st_mtime_ns
    os.unlink(root / "ray" / "b.parquet")  # as if the run had died before b was done
    out = _run_cli("label", "--engine", "ray", "--model", root / "m.safetensors", "--out", root / "ray",
                   "--batch-size", "1000", "--no-progress", root / "a.npy", root / "b.parquet")
    assert "labeled 1 shard(s) (2,500 rows" in out and "1 already done" in out
    assert os.stat(root / "ray" / "a.parquet").st_mtime_ns == a_time
    _same_as_local(world, root / "ray")


def test_ray_worker_killed_mid_run_every_row_once(world):
    root = world["root"]
    Path(ARMED).touch()  # the first worker to publish a part removes this file and SIGKILLs itself
    rep = hermes.label([root / "a.npy", root / "b.parquet"], root / "m.safetensors", root / "killed",
                       engine="ray", batch_size=500, progress=False, ray_options=dict(concurrency=2))
    assert not os.path.exists(ARMED), "no worker was killed"
    assert sum(rep.nodes.values()) == 6000  # every range reported once, the killed one after its retry
    lab = _same_as_local(world, root / "killed")
    for i in range(2):  # every row exactly once
        np.testing.assert_array_equal(np.sort(lab.rows[lab.shard == i]), np.arange([3500, 2500][i]))


def test_ray_two_nodes_one_machine(world):
    """A head node and a second node (its own CPU and a custom resource), each a `ray start --block` process group
    this test owns; `hermes label --engine ray --address` from a separate driver process uses both."""
    root = world["root"]
    env = ray_env()
    env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "1"
    head, addr, tmp = start_ray_head(env, num_cpus=1)
    procs = [head]
    try:
        procs.append(subprocess.Popen([str(ray_command()), "start", "--block", "--address", addr, "--num-cpus", "1",
                                       "--resources", '{"second_node": 1}', "--disable-usage-stats",
                                       *ray_node_args()], env=env, cwd=tmp, start_new_session=True,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        probe = ("import ray, time, sys; ray.init(address=sys.argv[1], log_to_driver=False)\n"
                 "for _ in range(240):\n"
                 "    if len([n for n in ray.nodes() if n['Alive']]) == 2: break\n"
                 "    time.sleep(0.5)\n"
                 "print(len([n for n in ray.nodes() if n['Alive']]))")
        r = subprocess.run([sys.executable, "-c", probe, addr], env=env, cwd=tmp, capture_output=True, text=True,
                           timeout=240)
        assert r.stdout.strip().endswith("2"), r.stdout + r.stderr
        r = subprocess.run([sys.executable, "-m", "hermes", "label", "--engine", "ray", "--address", addr,
                            "--concurrency", "2", "--batch-size", "500", "--no-progress", "--model",
                            str(root / "m.safetensors"), "--out", str(root / "two"), str(root / "a.npy"),
                            str(root / "b.parquet")], env=env, cwd=tmp, capture_output=True, text=True, timeout=400)
        assert r.returncode == 0, r.stdout + r.stderr
        assert "ray: 2 node(s) labeled" in r.stdout, r.stdout
        _same_as_local(world, root / "two")
    finally:
        stop_ray_nodes(procs, tmp)
