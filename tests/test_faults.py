"""Faults injected into real searches: a real ``mlflow server`` on loopback killed and restarted, a
driver killed with SIGKILL, a resume against another store (issue 13's findings 1 and 4).

Bad data, unreachable services and names leaving their folder (findings 2, 3 and 5) fail in the
pre-flight, before Ray starts: ``tests/test_preflight.py`` runs the search's ``main`` on them and
checks the exit status, the one-line message, the time bound and that nothing was written.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import mlflow
import pytest
import ray
import yaml
from ray import cloudpickle, tune

from hpo import tracking
from hpo.journal import JOURNAL_FILE
from hpo.search import main as search_main
from hpo.space import load_space, space_from_dict
from hpo.stopping import HealthStopper
from hpo.tracking import MlflowTrialCallback, open_parent_run
from hpo.trainable import FINAL_RESULT_NAME
from tests.support import mlflow_answers, tune_results, wait_for

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
MLFLOW = Path(sys.executable).with_name("mlflow")
EPOCHS = 3


class MlflowServer:
    """``mlflow server`` on a loopback port, its store in ``root``; stopped with SIGKILL, as a crash."""

    def __init__(self, root: Path) -> None:
        self.root = root
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.uri = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 180.0) -> None:
        command = [str(MLFLOW), "server", "--backend-store-uri", f"sqlite:///{self.root / 'server.db'}",
                   "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"]  # fmt: skip
        log = (self.root / "server.log").open("a")
        self.proc = subprocess.Popen(command, cwd=self.root, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        if mlflow_answers(self.uri, timeout):
            return
        self.stop()
        pytest.fail(f"mlflow server did not start within {timeout:.0f} s:\n{(self.root / 'server.log').read_text()[-2000:]}")

    def stop(self) -> None:
        if self.proc is not None:
            _kill_session(self.proc.pid)
            self.proc.wait(timeout=30)
        self.proc = None


def _kill_session(sid: int, timeout: float = 60.0) -> None:
    """SIGKILL every process of a session (a search's driver and its Ray: Ray moves each worker
    into a process group of its own, but they stay in the driver's session), and wait for them."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        alive = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    zombie = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"  # dead, not yet reaped
                    if os.getsid(int(entry.name)) == sid and not zombie:
                        alive.append(int(entry.name))
                        os.kill(int(entry.name), signal.SIGKILL)
                except OSError:
                    pass
        if not alive:
            return
        time.sleep(0.2)
    raise RuntimeError(f"processes of session {sid} survived SIGKILL for {timeout:.0f} s")


@pytest.fixture
def server(tmp_path: Path):
    root = tmp_path / "server"
    root.mkdir()
    server = MlflowServer(root)
    yield server
    server.stop()


def _space(tmp_path: Path) -> Path:
    """Three healthy trials one at a time, 3 short epochs each, no scheduler: all complete."""
    raw = load_space("cpu-mini").as_dict()
    raw.update(
        name="faults",
        budget={"num_samples": 3, "max_epochs": EPOCHS, "max_concurrent_trials": 1, "time_budget_s": None},
        scheduler={"type": "none"},
        params={"optim.lr": {"distribution": "loguniform", "low": 5e-3, "high": 2e-2}},
        points_to_evaluate=[],
    )
    raw["fixed"].update(
        {"data.max_train_images": 96, "data.max_val_images": 16, "model.input_size": 128, "schedule.warmup_epochs": 0.5}
    )
    path = tmp_path / "faults.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def _start_search(args: list[str]) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "hpo/search.py", *args], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)  # fmt: skip


def _assert_every_trial_once_with_every_epoch(uri: str, experiment: str, search_dir: Path) -> None:
    client = mlflow.MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    parent = client.search_runs([exp.experiment_id], filter_string="tags.`hpo.role` = 'parent'")
    assert len(parent) == 1 and parent[0].data.tags["hpo.status"] == "finished" and parent[0].info.status == "FINISHED"
    runs = client.search_runs([exp.experiment_id], filter_string="tags.`hpo.role` = 'trial'")
    tune_trials = tune_results(search_dir)
    assert len(tune_trials) == 3
    assert sorted(r.data.tags["hpo.trial_id"] for r in runs) == sorted(tune_trials)  # each trial exactly once
    for run in runs:
        trial = run.data.tags["hpo.trial_id"]
        assert run.data.tags["hpo.outcome"] == "completed" and run.info.status == "FINISHED", trial
        assert run.data.params, trial
        for key in ("val/ap", "train/loss", "health/stop"):
            steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, key))
            assert steps == list(range(1, EPOCHS + 1)), (trial, key, steps)
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"trial_config.yaml", "learning_curves.png"} <= artifacts, (trial, artifacts)


def test_an_outage_loses_no_trial_and_resume_writes_every_epoch(server: MlflowServer, mini_root: Path, tmp_path: Path) -> None:
    """Finding 1: the tracking server dies after the first epoch; the search trains on (each
    write gives up after the bounded retries, then waits in the journal), finishes, says what it
    kept; the server comes back; ``--resume`` writes it all: one run per trial, every epoch."""
    server.start()
    search_dir = tmp_path / "ray" / "faults"
    args = ["--space", str(_space(tmp_path)), "--data", str(mini_root), "--storage-path", str(tmp_path / "ray"),
            "--tracking-uri", server.uri, "--no-report"]  # fmt: skip
    proc = _start_search(args)
    wait_for(lambda: any(rows for rows in tune_results(search_dir).values()), 300, proc, stop=lambda: _kill_session(proc.pid))
    server.stop()
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-3000:]
    journal = search_dir / JOURNAL_FILE
    assert journal.is_file() and "--resume" in out and str(journal) in out, out[-3000:]
    assert "Traceback" not in out
    assert {row[-1]["epoch"] for row in tune_results(search_dir).values()} == {EPOCHS}  # training went on

    server.start()
    assert search_main([*args, "--resume"]) == 0
    assert not journal.exists()
    _assert_every_trial_once_with_every_epoch(server.uri, "faults", search_dir)


# -- the server comes back during the search -----------------------------------------------------


def _slow_trainable(config: dict[str, Any]) -> None:
    """Three made-up epochs; the last trial waits for the test's flag before its last one."""
    for epoch in range(1, EPOCHS + 1):
        if config["i"] == 2 and epoch == EPOCHS:
            flag = Path(config["flag"])
            deadline = time.monotonic() + 300
            while not flag.exists() and time.monotonic() < deadline:
                time.sleep(0.2)
        tune.report({"epoch": epoch, "val/ap": 0.1 * epoch, "health/stop": 0.0, "health/diagnosis": "healthy",
                     "val/num_images": 4.0, "train/loss": 1.0 / epoch})  # fmt: skip


class _KillOnFirstResult(tune.Callback):
    """Kills the server when the first result arrives (before the tracking callback writes it),
    restarts it in a thread, and sets the flag the last trial waits for once it answers."""

    def __init__(self, server: MlflowServer, flag: Path) -> None:
        self.server, self.flag, self.thread = server, flag, None

    def __getstate__(self) -> dict:  # the Tuner pickles its callbacks (and uses the live ones)
        return {}

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        if self.thread is None:
            self.server.stop()

            def back() -> None:
                time.sleep(3)  # several writes fail meanwhile
                self.server.start()
                time.sleep(2 * tracking.RETRY_S)
                self.flag.touch()

            self.thread = threading.Thread(target=back, daemon=True)
            self.thread.start()


def test_writes_are_replayed_when_the_server_answers_again(server: MlflowServer, tmp_path: Path, monkeypatch, caplog) -> None:
    monkeypatch.setattr(tracking, "RETRY_S", 1.0)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    server.start()
    raw = load_space("cpu-mini").as_dict()
    raw.update(name="reconnect", budget={"num_samples": 1, "max_epochs": EPOCHS, "max_concurrent_trials": None, "time_budget_s": None},
               scheduler={"type": "none"}, sampler={"type": "grid"}, points_to_evaluate=[],
               params={"optim.lr": {"distribution": "grid", "values": [0.01]}})  # fmt: skip
    space = space_from_dict(raw)
    parent = open_parent_run(server.uri, "reconnect", "feed" * 8, space)
    journal = tmp_path / JOURNAL_FILE
    callback = MlflowTrialCallback(server.uri, parent, "feed" * 8, space, EPOCHS, journal=journal)
    flag = tmp_path / "server-is-back"
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING", log_to_driver=False)
    try:
        tuner = tune.Tuner(
            _slow_trainable,
            param_space={"i": tune.grid_search([0, 1, 2]), "flag": str(flag), "optim.lr": 0.01},
            run_config=tune.RunConfig(
                name="reconnect",
                storage_path=str(tmp_path / "ray"),
                stop=HealthStopper(),
                callbacks=[_KillOnFirstResult(server, flag), callback],
                verbose=0,
            ),  # fmt: skip
        )
        with caplog.at_level("WARNING", logger="hpo.tracking"):
            results = tuner.fit()
    finally:
        ray.shutdown()
    assert not results.errors
    assert any("tracking failed" in r.getMessage() for r in caplog.records)
    assert any("answers again" in r.getMessage() for r in caplog.records)
    assert callback.journaled == 0 and not journal.exists()
    client = mlflow.MlflowClient(server.uri)
    runs = client.search_runs([client.get_run(parent).info.experiment_id], filter_string="tags.`hpo.role` = 'trial'")
    assert len(runs) == 3
    for run in runs:
        assert run.data.tags["hpo.outcome"] == "completed"
        assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "val/ap")) == [1, 2, 3]


# -- a driver killed right after a trial finished ------------------------------------------------


def test_a_finished_trial_is_never_run_again(mini_root: Path, tmp_path: Path, capsys) -> None:
    """Finding 4: the driver is killed (SIGKILL, Ray with it) the moment a trial has stored its
    last checkpoint, before Tune's saved state says it finished: on ``--resume`` that trial returns
    its final result at once (no epoch trained twice), and MLflow holds every trial once. The
    stored search is then refused without ``--resume``, and with another tracking URI."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    search_dir = tmp_path / "ray" / "faults"
    args = ["--space", str(_space(tmp_path)), "--data", str(mini_root), "--storage-path", str(tmp_path / "ray"),
            "--tracking-uri", uri, "--no-report"]  # fmt: skip
    proc = _start_search(args)
    wait_for(lambda: any(search_dir.glob(f"*/checkpoint_*/{FINAL_RESULT_NAME}")), 300, proc, stop=lambda: _kill_session(proc.pid))
    _kill_session(proc.pid)
    proc.communicate(timeout=60)
    finished = next(search_dir.glob(f"*/checkpoint_*/{FINAL_RESULT_NAME}")).parents[1]

    assert search_main([*args, "--resume"]) == 0
    after = tune_results(search_dir)
    rows = next(r for r in after.values() if r[0]["trial_id"] in finished.name)
    trained = Counter((row["epoch"], row["time/epoch_s"]) for row in rows)
    epochs = Counter(epoch for epoch, _ in trained)
    assert epochs == Counter(range(1, EPOCHS + 1)), rows  # each epoch trained once (a re-report repeats its row)
    _assert_every_trial_once_with_every_epoch(uri, "faults", search_dir)

    capsys.readouterr()
    assert search_main(args) == 2  # the same search again without --resume
    assert "--resume" in capsys.readouterr().err
    assert search_main([*args[:-3], "--tracking-uri", f"sqlite:///{tmp_path / 'other.db'}", "--no-report", "--resume"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"--tracking-uri sqlite:///{tmp_path / 'mlflow.db'}" in err[0]
    assert not (tmp_path / "other.db").exists()
