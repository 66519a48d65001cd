"""Cluster mode of the search (``hpo/cluster.py``).

The slow tests run the search on a real two-node Ray cluster on loopback, token authentication on,
MLflow behind a real ``mlflow server``: trials spread over both nodes, and survive the loss of the
worker node.

Both nodes run on this machine as separate ``ray start`` process groups, each with its own
temporary directory, ports and one CPU, so two one-CPU trials at a time must use both nodes. The
driver joins at 127.0.0.1 (Ray itself advertises the nodes at the machine's address, which is why
they share an IP and why the trials report Ray's node id).
Every Ray process gets the token through ``RAY_AUTH_TOKEN_PATH``; the driver (``hpo/search.py``,
run as a user would) gets only that, and :func:`hpo.cluster.connect` switches token mode on.
Nothing here touches other Ray instances on the machine: teardown kills our own process groups.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pytest
import yaml
from ray._private.ray_constants import get_runtime_env_default_excludes
from ray._private.runtime_env.packaging import create_package

from bench import loopback_cluster as loopback
from bench.loopback_cluster import BIN, Cluster, Node, free_port, kill_group
from hpo.cluster import CUDA_CONTEXT_RESERVE_BYTES, EXCLUDES, cap_gpu_memory, memory_cap, runtime_env
from hpo.space import load_space
from hpo.trainable import NODE_ID_KEY
from tests.support import mlflow_answers

REPO = Path(__file__).resolve().parents[1]
#: Per search: (trials, epochs each). Each node holds one trial at a time, so two running at once
#: are on both nodes; "spread" trials last several epochs so that the first one still runs when the
#: other node's worker has started (with 2 epochs a fast first trial once ended before that and
#: Tune gave its reused worker every later trial: all on one node). The fault test needs a trial
#: with epochs left after its first checkpoint.
SIZE = {"spread": (4, 5), "fault": (3, 4)}


@pytest.fixture(scope="module")
def token_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The environment of every process of the cluster: token auth on, our own token."""
    return loopback.token_env(tmp_path_factory.mktemp("auth"))


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """A real tracking server on loopback: SQLite backend, artifacts served from a directory."""
    root = tmp_path_factory.mktemp("mlflow")
    port = free_port()
    cmd = [str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
           "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}", "--artifacts-destination", str(root / "artifacts")]  # fmt: skip
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    log = (root / "server.log").open("w")
    proc = subprocess.Popen(cmd, env=env, start_new_session=True, stdout=log, stderr=subprocess.STDOUT)
    uri = f"http://127.0.0.1:{port}"
    try:
        yield uri, root
    finally:
        kill_group(proc.pid)
        log.close()


def _wait_for_server(uri: str, root: Path, timeout_s: float = 240) -> None:
    if not mlflow_answers(uri, timeout_s):
        pytest.fail(f"mlflow server at {uri} did not come up in {timeout_s} s:\n{(root / 'server.log').read_text()[-3000:]}")


@pytest.fixture(scope="module")
def cluster(token_env: dict[str, str], mlflow_server: tuple[str, Path]) -> Iterator[Cluster]:
    """A head node (started while the MLflow server starts); each test adds its worker node."""
    cluster = loopback.start_head(token_env)
    try:
        _wait_for_server(*mlflow_server)
        yield cluster
    finally:
        loopback.stop_head(cluster)


@pytest.fixture
def worker(cluster: Cluster) -> Iterator[Node]:
    """A worker node of this test only (one CPU), gone when the test ends."""
    node = loopback.add_worker(cluster)
    try:
        yield node
    finally:
        node.stop()


def _space_file(tmp_path: Path, name: str) -> Path:
    """cpu-mini cut down: a few healthy trials of a few epochs on 32 images at 128 px, two at a time."""
    num_trials, max_epochs = SIZE[name]
    raw = load_space("cpu-mini").as_dict()
    raw.update(
        name=name,
        budget={"num_samples": num_trials, "max_epochs": max_epochs, "max_concurrent_trials": 2, "time_budget_s": None},
        scheduler={"type": "none"},  # every trial runs to the end: epochs are predictable
        params={
            "optim.lr": {"distribution": "loguniform", "low": 1e-3, "high": 3e-2},
            "schedule.warmup_epochs": {"distribution": "uniform", "low": 0.0, "high": 0.5},
        },
    )
    raw.pop("points_to_evaluate", None)
    raw["sampler"]["n_startup_trials"] = num_trials
    raw["fixed"].update({"data.max_train_images": 32, "data.max_val_images": 16, "model.input_size": 128, "batch_size": 8})
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def _search(cluster: Cluster, tracking_uri: str, tmp_path: Path, mini_root: Path, name: str) -> subprocess.Popen:
    """``python hpo/search.py --address ...`` as a user runs it; it gets the token file only."""
    env = {k: v for k, v in cluster.env.items() if k != "RAY_AUTH_MODE"}  # connect() turns it on
    cmd = [sys.executable, str(REPO / "hpo" / "search.py"), "--address", cluster.address,
           "--tracking-uri", tracking_uri, "--storage-path", str(tmp_path / "shared"),
           # Both loopback nodes share this host: a tmp cache, not the node-local default under ~.
           "--cache-dir", str(tmp_path / "image-cache"),
           "--space", str(_space_file(tmp_path, name)), "--data", str(mini_root)]  # fmt: skip
    log = (tmp_path / "search.log").open("w")
    return subprocess.Popen(cmd, env=env, cwd=tmp_path, start_new_session=True, stdout=log, stderr=subprocess.STDOUT)


def _finish(search: subprocess.Popen, tmp_path: Path, timeout_s: float = 300) -> str:
    try:
        search.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        kill_group(search.pid)
        search.wait()
    out = (tmp_path / "search.log").read_text()
    assert search.returncode == 0, f"search exited {search.returncode}:\n{out[-6000:]}"
    return out


def _epochs(tmp_path: Path, name: str) -> dict[str, list[dict]]:
    """Per Tune trial, its reports in order: ``epoch``, ``training_iteration``, node id."""
    trials = {}
    for result in sorted((tmp_path / "shared" / name).glob("*/result.json")):
        rows = []
        for line in result.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:  # a line Tune is still writing
                break
        if rows:
            trials[rows[0]["trial_id"]] = rows
    return trials


def _mlflow_trials(tracking_uri: str, name: str) -> list:
    client = mlflow.MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name(name)
    assert experiment is not None, f"no MLflow experiment {name!r} on the tracking server"
    return client.search_runs([experiment.experiment_id], filter_string="tags.`hpo.role` = 'trial'")


def _check_tracking(tracking_uri: str, server_root: Path, name: str, trials: dict[str, list[dict]]) -> None:
    """Every Tune trial is one MLflow child run on the server, epochs logged once, artifacts stored."""
    runs = _mlflow_trials(tracking_uri, name)
    by_trial = {}
    for run in runs:
        by_trial.setdefault(run.data.tags["hpo.trial_id"], []).append(run)
    assert sorted(by_trial) == sorted(trials), f"MLflow trials {sorted(by_trial)} != Tune trials {sorted(trials)}"
    assert all(len(v) == 1 for v in by_trial.values()), {k: len(v) for k, v in by_trial.items()}
    client = mlflow.MlflowClient(tracking_uri)
    for trial_id, (run,) in by_trial.items():
        assert run.data.tags["hpo.outcome"] == "completed", (trial_id, run.data.tags)
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "val/ap")]
        assert steps == list(range(1, SIZE[name][1] + 1)), (trial_id, steps)
        # Artifacts went through the server to its --artifacts-destination.
        assert list(server_root.glob(f"artifacts/**/{run.info.run_id}/artifacts/trial_config.yaml")), trial_id


def _kill_worker_mid_trial(search: subprocess.Popen, worker: Node, tmp_path: Path) -> tuple[str, int]:
    """Kill the worker node once a trial on it has checkpointed an epoch and has more to run."""
    worker_id, deadline = worker.node_id, time.monotonic() + 240
    while time.monotonic() < deadline and search.poll() is None:
        for trial_id, rows in _epochs(tmp_path, "fault").items():
            if rows and rows[-1][NODE_ID_KEY] == worker_id and rows[-1]["epoch"] < SIZE["fault"][1]:
                worker.kill()
                return trial_id, rows[-1]["epoch"]
        time.sleep(0.2)
    pytest.fail("no trial ran on the worker node before the search ended")


# -- the runtime environment and the GPU share, no cluster needed -----------------------------------


def test_the_runtime_env_ships_this_checkout() -> None:
    assert runtime_env() == {"working_dir": str(REPO), "excludes": list(EXCLUDES)}


def test_the_excludes_ship_the_code_and_leave_data_results_and_stores_behind(tmp_path: Path) -> None:
    checkout = tmp_path / "checkout"
    shipped = ["pyproject.toml", "hpo/search.py", "model/data/mini.py", "model/data/widerface.py", "search_spaces/cpu-mini.yaml"]
    left = ["data/wider-mini/WIDER_train/images/0.jpg", "data/wider-mini/.cache/train.arrow", "ray_results/s/result.json",
            "mlruns/1/meta.yaml", "mlflow.db", ".venv/bin/python", ".git/HEAD", "bench/results/r.json", "best.pt",
            "hpo/__pycache__/search.cpython-311.pyc", "runs/prod/last.pt"]  # fmt: skip
    for name in shipped + left:
        (checkout / name).parent.mkdir(parents=True, exist_ok=True)
        (checkout / name).write_text("x")
    # Ray's own packaging of a working_dir, with the excludes Ray adds itself.
    create_package(str(checkout), tmp_path / "pkg.zip", include_gitignore=True,
                   excludes=get_runtime_env_default_excludes() + list(EXCLUDES))  # fmt: skip
    with zipfile.ZipFile(tmp_path / "pkg.zip") as pkg:
        files = sorted(n for n in pkg.namelist() if not n.endswith("/"))
    assert files == sorted(shipped)


def test_a_gpu_share_caps_the_allocator_below_the_share() -> None:
    gib = 2**30
    assert memory_cap(0.5, 24 * gib) == pytest.approx((12 * gib - CUDA_CONTEXT_RESERVE_BYTES) / (24 * gib))
    assert memory_cap(0.25, 80 * gib) < 0.25
    with pytest.raises(ValueError, match="--gpus-per-trial"):
        memory_cap(0.05, 8 * gib)  # 410 MiB: less than a CUDA context
    assert cap_gpu_memory(1.0) is None  # a whole GPU: nothing to share
    assert cap_gpu_memory(0.0) is None  # a CPU trial


# -- a real two-node cluster -------------------------------------------------------------------------


@pytest.mark.slow
def test_search_spreads_over_two_nodes_with_token_auth(
    cluster: Cluster, worker: Node, mlflow_server: tuple[str, Path], mini_root: Path, tmp_path: Path
) -> None:
    # A driver with another token is refused, with an error that says what to do.
    refused = subprocess.run(
        [sys.executable, "-c", f"from hpo.cluster import connect; connect({cluster.address!r})"],
        env={**cluster.env, "RAY_AUTH_TOKEN": secrets.token_hex(32), "RAY_gcs_server_port_wait_time_s": "2"},
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert refused.returncode != 0 and "refused this driver's token" in refused.stderr, refused.stderr[-3000:]

    tracking_uri, server_root = mlflow_server
    out = _finish(_search(cluster, tracking_uri, tmp_path, mini_root, "spread"), tmp_path)
    assert "== search finished ==" in out and f"completed: {SIZE['spread'][0]}" in out, out[-3000:]

    trials = _epochs(tmp_path, "spread")
    assert len(trials) == SIZE["spread"][0]
    nodes = {row[NODE_ID_KEY] for rows in trials.values() for row in rows}
    assert nodes == {cluster.head.node_id, worker.node_id}, "the trials did not run on both nodes"
    _check_tracking(tracking_uri, server_root, "spread", trials)


@pytest.mark.slow
def test_losing_the_worker_node_resumes_its_trial_from_checkpoint_elsewhere(
    cluster: Cluster, worker: Node, mlflow_server: tuple[str, Path], mini_root: Path, tmp_path: Path
) -> None:
    worker_id, head_id = worker.node_id, cluster.head.node_id
    tracking_uri, server_root = mlflow_server
    search = _search(cluster, tracking_uri, tmp_path, mini_root, "fault")

    try:
        victim, killed_after = _kill_worker_mid_trial(search, worker, tmp_path)
        out = _finish(search, tmp_path)
    finally:
        kill_group(search.pid)  # left running only when the test failed before it ended
    num_trials, max_epochs = SIZE["fault"]
    assert "== search finished ==" in out and f"completed: {num_trials}" in out, out[-3000:]
    trials = _epochs(tmp_path, "fault")
    assert len(trials) == num_trials
    rows = trials[victim]
    epochs = [row["epoch"] for row in rows]
    nodes = [row[NODE_ID_KEY] for row in rows]
    # Resumed, not restarted: epochs in order through to the end, epoch 1 only once (a restart from
    # scratch would report it again). An epoch the dying node reported before its checkpoint
    # reached the driver is run again from the previous checkpoint: at most one repeat.
    where = f"trial {victim}: epochs {epochs} (killed after {killed_after})"
    assert sorted(set(epochs)) == list(range(1, max_epochs + 1)) and epochs == sorted(epochs), where
    assert epochs.count(1) == 1 and len(epochs) - max_epochs <= 1, where
    assert [row["training_iteration"] for row in rows] == epochs
    # ... the first epochs on the worker, the rest, from its last checkpoint, on the head.
    moved_at = nodes.index(head_id) if head_id in nodes else len(nodes)
    assert moved_at > 0 and moved_at < len(nodes), f"trial {victim} never moved: nodes {nodes}"
    assert set(nodes[:moved_at]) == {worker_id} and set(nodes[moved_at:]) == {head_id}, nodes
    assert epochs[moved_at] > killed_after, (epochs, killed_after)
    restored = [line for line in out.splitlines() if "Restored on" in line and "from checkpoint" in line]
    assert any(victim in line for line in restored), f"Tune did not restore {victim} from a checkpoint: {restored}"
    _check_tracking(tracking_uri, server_root, "fault", trials)
