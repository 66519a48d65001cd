"""One home for each contract: the epoch report's keys live in ``model/report_keys.py``, the MLflow
tags, artifact names and outcomes in ``hpo/layout.py`` (the files a run writes beside its
checkpoints, which the search logs as artifacts, in ``model/run_files.py``: ``model/`` cannot
import ``hpo/``); no other module of ``model/`` or ``hpo/`` spells them. The report CLI and the
driver's tracking callback import no torch."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from hpo import layout as L
from model import report_keys as K

REPO = Path(__file__).resolve().parents[1]
SOURCES = sorted(p.relative_to(REPO).as_posix() for d in ("model", "hpo") for p in (REPO / d).rglob("*.py"))

#: The report's grouped keys (``val/ap``); the bare ``epoch`` and ``step`` are ordinary words too
#: (a checkpoint's fields, an axis label).
REPORT_KEYS = {k for k in K.REPORT_KEYS if "/" in k}
#: Tag names and artifact files: nothing else in model/ or hpo/ is spelled like them.
TAGS_AND_ARTIFACTS = {
    v for n, v in vars(L).items() if n.isupper() and isinstance(v, str) and v.startswith(("hpo.", "mlflow."))
} | {v for n, v in vars(L).items() if n.endswith("_ARTIFACT")}
#: Names whose home is not the layout: the trainer writes those files, production training sets that
#: experiment tag and the run tags it shares with trials too (model/ cannot import hpo/); the layout
#: re-exports them.
ARTIFACT_HOMES = {
    L.EFFECTIVE_CONFIG_ARTIFACT: "model/run_files.py",
    L.RECOVERIES_ARTIFACT: "model/run_files.py",
    L.EXPERIMENT_KIND: "model/run_files.py",
    **dict.fromkeys((L.ROLE, L.OUTCOME, L.DIAGNOSIS, L.HEALTH_MESSAGE, L.DESCRIPTION), "model/run_files.py"),
}
#: Tag values: ordinary words outside hpo/ (a data cache's "error"), so checked in hpo/ only, the one
#: package that can import the layout.
TAG_VALUES = {L.RUNNING, L.COMPLETED, L.PRUNED, L.ERROR, L.INTERRUPTED, L.FINISHED, L.PARENT, L.TRIAL}
#: The same words meaning something else.
ELSEWHERE = {
    ("hpo/space.py", L.ERROR),  # pydantic's error context: ctx["error"]
    ("hpo/report.py", L.TRIAL),  # a table's column header
    ("hpo/tracking.py", L.ERROR),  # the name of Tune's hook on_trial_error, in tracking's warnings
}


def string_literals(source: str) -> list[tuple[int, str]]:
    """``(line, text)`` of every string literal but docstrings; f-strings give their literal parts."""
    tree = ast.parse(source)
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
        else:
            continue
        # The statement after an assignment documents it (``x = 1`` then ``"""what x is"""``) too.
        for i, stmt in enumerate(body):
            if isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant) and isinstance(stmt.value.value, str):
                if i == 0 or isinstance(body[i - 1], (ast.Assign, ast.AnnAssign)):
                    docstrings.add(id(stmt.value))
    return [
        (node.lineno, node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings
    ]


def misplaced(path: str, source: str) -> list[str]:
    """The contract strings ``source`` spells though ``path`` is not their home."""
    found = []
    for line, text in string_literals(source):
        if text in REPORT_KEYS and path != "model/report_keys.py":
            found.append(f"{path}:{line}: report key {text!r}: use model.report_keys")
        layout_home = path == "hpo/layout.py"
        if text in TAGS_AND_ARTIFACTS and path != ARTIFACT_HOMES.get(text, "hpo/layout.py"):
            home = ARTIFACT_HOMES.get(text, "hpo/layout.py").removesuffix(".py").replace("/", ".")
            found.append(f"{path}:{line}: {text!r}: use {home}")
        hpo_word = path.startswith("hpo/") and (text in TAG_VALUES or text.startswith((L.STOPPED, L.RECOVERED)))
        if hpo_word and not layout_home and (path, text) not in ELSEWHERE:
            found.append(f"{path}:{line}: outcome, role or status {text!r}: use hpo.layout")
    return found


@pytest.mark.parametrize("path", SOURCES)
def test_each_key_tag_and_outcome_is_spelled_in_its_home_only(path: str) -> None:
    assert misplaced(path, (REPO / path).read_text()) == []


def test_the_check_finds_a_stray_literal_and_ignores_docstrings() -> None:
    source = '"""Mentions "val/ap" and hpo.outcome."""\nX = 1\n"""X is ``health/stop``."""\n'
    assert misplaced("hpo/plots.py", source) == []
    stray = 'def f(r):\n    """Reads val/ap."""\n    return r["val/ap"], f"stopped:{r}", "hpo.outcome", "pruned"\n'
    assert len(misplaced("hpo/plots.py", stray)) == 4
    recovered = 'A = "effective_config.yaml"\nB = f"recovered:{A}"\n'
    assert len(misplaced("hpo/export.py", recovered)) == 2
    assert len(misplaced("hpo/layout.py", recovered)) == 1  # re-exported there, spelled in model/run_files.py
    assert misplaced("model/run_files.py", 'A = "effective_config.yaml"') == []
    assert misplaced("model/data/cache.py", 'x = {"error": 1}') == []  # an ordinary word outside hpo/


def test_the_homes_hold_what_the_check_looks_for() -> None:
    assert {"val/ap", "health/stop", "train/box_weight", "time/epoch_s"} <= REPORT_KEYS
    assert {"hpo.role", "hpo.outcome", "hpo.diagnosis", "mlflow.parentRunId", "trial_config.yaml"} <= TAGS_AND_ARTIFACTS
    assert {"effective_config.yaml", "recoveries.json"} <= TAGS_AND_ARTIFACTS
    assert {"mlflow.experimentKind", "hpo.optuna_storage", "hpo.optuna_study"} <= TAGS_AND_ARTIFACTS
    assert tuple(K.EpochReport.__annotations__) == K.REPORT_KEYS


def test_how_a_trial_ended_is_decided_once() -> None:
    def report(epoch: object, stop: float = 0.0, diagnosis: str | None = "healthy") -> dict[str, object]:
        return {K.EPOCH: epoch, K.HEALTH_STOP: stop, K.HEALTH_DIAGNOSIS: diagnosis}

    assert L.trial_end(report(3), max_epochs=3) == L.TrialEnd("completed")
    assert L.trial_end(report(2), max_epochs=3) == L.TrialEnd("pruned", 2)
    assert L.trial_end(report(1, 1.0, "diverged"), max_epochs=3) == L.TrialEnd("stopped:diverged")
    assert L.trial_end(report(3, 1.0, None), max_epochs=3) == L.TrialEnd("stopped:unknown")  # stopped wins
    assert L.trial_end({}, max_epochs=3) == L.TrialEnd("pruned", 0)  # no epoch reported: cut at 0
    assert L.is_stopped("stopped:stalled") and not L.is_stopped("completed")
    recovered = {**report(3), K.HEALTH_RECOVERIES: 1.0, K.HEALTH_RECOVERED_FROM: "diverged"}
    assert L.trial_end(recovered, max_epochs=3) == L.TrialEnd("recovered:diverged")
    assert L.is_recovered("recovered:diverged") and not L.is_recovered("completed")


def test_the_penalty_is_worse_than_any_real_value() -> None:
    assert L.penalty("max") == L.PENALTY_MAX < 0 and L.penalty("min") == L.PENALTY_MIN > 1e9
    assert L.measured([(1, 0.2), (2, L.PENALTY_MAX)], "max") == [(1, 0.2)]
    with pytest.raises(ValueError, match="mode"):
        L.penalty("best")  # type: ignore[arg-type]


def test_report_tracking_and_export_import_no_torch() -> None:
    code = "import sys, hpo.report, hpo.tracking, hpo.export; assert 'torch' not in sys.modules, 'torch imported'"
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
