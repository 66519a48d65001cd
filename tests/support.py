"""Helpers the tests share: a one-epoch run folder, a search's Tune records, waiting on a running search, and
waiting for an MLflow server to answer."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from hpo.space import load_space


def one_epoch_run(mini_root: Path, out: Path, input_size: int, **overrides: object) -> Path:
    """``out`` as ``model.train`` leaves it (``config.yaml``, ``last.pt``) after one epoch of the tiny
    SSD on 32 images. A prior of 0.1 and one epoch: the scores already depend on the image, so
    there are detections to write, score and export (AP small but above 0)."""
    from model.config import TrainConfig
    from model.trainer import Trainer

    cfg = TrainConfig().with_overrides(
        {
            "data.root": str(mini_root),
            "data.cache": False,
            "data.max_train_images": 32,
            "device": "cpu",
            "epochs": 1,
            "batch_size": 16,
            "model.input_size": input_size,
            "model.prior_prob": 0.1,
            "optim.lr": 0.01,
            "schedule.warmup_iters": 2,
            **overrides,
        }
    )
    trainer = Trainer(cfg, log=lambda _: None)
    trainer.fit()
    trainer.save_checkpoint(out / "last.pt")
    cfg.to_yaml(out / "config.yaml")
    return out


def tune_results(search_dir: Path) -> dict[str, list[dict]]:
    """Tune's per-trial result rows (``result.json``), by trial id."""
    rows = {}
    for file in search_dir.glob("*/result.json"):
        lines = [json.loads(line) for line in file.read_text().splitlines() if line.strip()]
        if lines:
            rows[lines[0]["trial_id"]] = lines
    return rows


def wait_for(predicate: Callable[[], bool], timeout: float, proc: subprocess.Popen, stop: Callable[[], None]) -> None:
    """Poll ``predicate`` while the search ``proc`` runs; fail (after ``stop()``) if it ends first or
    the predicate never holds within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            out = proc.stdout.read() if proc.stdout else ""
            pytest.fail(f"the search ended too soon (rc {proc.returncode}):\n{out[-3000:]}")
        if predicate():
            return
        time.sleep(0.2)
    stop()
    pytest.fail(f"the search did not reach the awaited point within {timeout:.0f} s")


def mlflow_answers(uri: str, timeout: float) -> bool:
    """Whether the MLflow server at ``uri`` answers its health check within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=2) as response:
                if response.status == 200:
                    return True
        except OSError:
            time.sleep(0.5)
    return False


def space_file(tmp_path: Path, name: str, *, sampler: dict | None = None, fixed: dict | None = None, **fields: object) -> Path:
    """A search space derived from cpu-mini (``fields`` replace its top-level entries, ``sampler``
    and ``fixed`` update those), written to ``tmp_path/<name>.yaml``."""
    raw = load_space("cpu-mini").as_dict()
    raw.update(name=name, **fields)
    raw["sampler"].update(sampler or {})
    raw["fixed"].update(fixed or {})
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def search_args(space: Path, data: Path, tmp_path: Path, *extra: str) -> list[str]:
    """The search's arguments for a test: its results, MLflow store and image cache in ``tmp_path``."""
    return ["--space", str(space), "--data", str(data), "--storage-path", str(tmp_path / "ray"),
            "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}", "--cache-dir", str(tmp_path / "cache"), *extra]  # fmt: skip
