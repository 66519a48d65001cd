"""The commands the search and the export print: with the interpreter that ran them.

After the README's quick start no virtual environment is active, so a bare ``python`` or ``mlflow``
is some other interpreter (or none): each printed command starts with ``sys.executable`` (or a
console script beside it), shortened to a path relative to the working directory inside it.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient

from hpo import layout as L
from hpo.space import load_space
from model.config import TrainConfig

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def venv(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A project folder with a virtual environment's bin/ (python, mlflow), the working directory,
    and ``sys.executable`` its python."""
    bin_dir = tmp_path / "project" / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    for name in ("python", "mlflow"):
        (bin_dir / name).write_text("")
    monkeypatch.setattr(sys, "executable", str(bin_dir / "python"))
    monkeypatch.chdir(tmp_path / "project")
    return tmp_path / "project"


def test_commands_use_the_running_interpreter_relative_to_the_working_directory(venv: Path, monkeypatch) -> None:
    assert L.python_command("-m", "model.train", "--config", "best.yaml") == ".venv/bin/python -m model.train --config best.yaml"
    assert L.python_command("x", "a b") == ".venv/bin/python x 'a b'"  # quoted for the shell
    assert L.tool_command("mlflow", "ui", module="mlflow") == ".venv/bin/mlflow ui"  # the script beside it
    assert L.tool_command("missing", "x", module="missing_mod") == ".venv/bin/python -m missing_mod x"
    assert L.tool_command("optuna-dashboard", "sqlite:///a.db") == ".venv/bin/optuna-dashboard sqlite:///a.db"  # to install there
    # The repository's scripts from wherever the command is run.
    assert L.script_command("export.py") == f".venv/bin/python {REPO / 'hpo' / 'export.py'}"
    monkeypatch.chdir(REPO)
    assert L.script_command("export.py", "--out", "b.yaml") == f"{venv / '.venv/bin/python'} hpo/export.py --out b.yaml"
    monkeypatch.chdir(venv / ".venv" / "bin")
    assert L.python_command() == "./python"  # never a bare name the shell would look up on PATH


def test_the_search_summary_prints_runnable_commands(venv: Path, capsys) -> None:
    from hpo.search import print_summary

    rows = [{"trial_id": "a1", "outcome": "completed", "epochs": 3, "val/ap": 0.5, "optim.lr": 0.01}]
    storage = f"sqlite:///{venv / 'ray_results' / 'cpu-mini' / 'optuna.db'}"
    space = load_space("cpu-mini")
    print_summary(
        rows, space, "ray_results/cpu-mini", "sqlite:///mlflow.db", "cpu-mini", optuna_storage=storage, experiment_id="3"
    )
    lines = capsys.readouterr().out.splitlines()
    browse = lines.index("browse:  .venv/bin/mlflow ui --backend-store-uri sqlite:///mlflow.db")
    view = "http://127.0.0.1:5000/#/experiments/3/runs?workflowType=machine_learning&viewStateShareKey=trials"
    assert lines[browse + 1] == f"   then open {view}  (the trials, best first)"
    export = f".venv/bin/python {REPO / 'hpo' / 'export.py'} --experiment cpu-mini --out best.yaml"
    assert f"export:  {export} --tracking-uri sqlite:///mlflow.db" in lines
    dashboard = next(line for line in lines if line.startswith("optuna:"))
    assert dashboard.startswith(f"optuna:  .venv/bin/optuna-dashboard {storage}")
    assert ".venv/bin/python -m pip install optuna-dashboard" in dashboard


def test_the_export_prints_the_training_command(venv: Path, capsys) -> None:
    from hpo.export import main as export_main

    uri = f"sqlite:///{venv / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("faces")
    parent = client.create_run(exp, tags={L.ROLE: L.PARENT, L.SEARCH_ID: "s1", L.METRIC: "val/ap", L.MODE: "max"})
    tags = {L.PARENT_RUN_ID: parent.info.run_id, L.ROLE: L.TRIAL, L.SEARCH_ID: "s1", L.TRIAL_ID: "t1",
            L.OUTCOME: L.COMPLETED, L.DIAGNOSIS: L.HEALTHY}  # fmt: skip
    run = client.create_run(exp, tags=tags).info.run_id
    client.log_metric(run, "val/ap", 0.4, step=1)
    config = venv / "staging" / L.TRIAL_CONFIG_ARTIFACT
    config.parent.mkdir()
    TrainConfig().to_yaml(config)
    client.log_artifact(run, str(config))
    assert export_main(["--experiment", "faces", "--out", "best.yaml", "--tracking-uri", uri]) == 0
    assert "train it with: .venv/bin/python -m model.train --config best.yaml" in capsys.readouterr().out
