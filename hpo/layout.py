"""The search's contract with MLflow and with itself: tags, artifacts, outcomes and the penalty.

The search writes, and the report and the export read back, this layout:

* one parent run per search, found again by its ``hpo.search_id`` (stable across ``--resume``):
  tags ``hpo.role=parent``, ``hpo.search_id``, ``hpo.space``, ``hpo.metric``, ``hpo.mode``, at the
  end ``hpo.status`` (``finished`` or ``interrupted``); artifacts ``search_space.yaml``,
  ``summary.csv``, the report under ``report/`` and, once exported, ``best.yaml`` with the tags
  ``hpo.exported_trial`` / ``hpo.exported_run``;
* one child run per trial (``mlflow.parentRunId``), found again by (``hpo.search_id``,
  ``hpo.trial_id``): tags ``hpo.role=trial``, ``hpo.outcome`` (``running``, ``completed``,
  ``pruned`` with ``hpo.pruned_at_epoch``, ``stopped:<diagnosis>``, ``error``, ``interrupted``
  until ``--resume`` goes on with it), ``hpo.diagnosis`` (the health monitor's latest) and, when
  its last report had one, ``hpo.health_message`` (that diagnosis with its evidence);
  params = the sampled dotted keys; artifacts ``trial_config.yaml`` and, once it ended,
  ``learning_curves.png`` and the sample detections of its last checkpoint (an errored trial's
  only if that checkpoint holds one, see :func:`hpo.trainable.last_chance_epochs`); a trial that
  recovered (``recovered:<diagnosis>``) also ``effective_config.yaml`` (its trial config with the
  recoveries' changes: what the export writes for it) and ``recoveries.json`` (the recovery
  events) of its last checkpoint, the files :mod:`model.run_files` names.

The experiment carries ``mlflow.experimentKind=custom_model_development`` (unless its owner set
another kind), so that MLflow 3's UI opens it on the runs table rather than its GenAI view. A TPE
search keeps its Optuna study in an RDB storage (a sqlite file; ``optuna-dashboard`` opens it),
named on the parent by ``hpo.optuna_storage`` (the URL) and ``hpo.optuna_study`` (the study's
name); each Optuna trial carries its Tune trial id as the user attribute ``hpo.trial_id``.

How a trial ended is decided here once (:func:`trial_end`) for MLflow, Optuna and the search's
summary. The commands the search and the export print for the user are built here too
(:func:`python_command`). Imports nothing heavy: the report CLI and the driver's callback read it
without torch.
"""

from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

from hpo.values import is_number
from model import report_keys as K
from model import run_files
from model.health import LABELS

#: MLflow 3.x refuses the plain file store; a sqlite file is the zero-setup default.
DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"

# -- tags ------------------------------------------------------------------------------------------
ROLE, SEARCH_ID, TRIAL_ID = run_files.ROLE_TAG, "hpo.search_id", "hpo.trial_id"
SPACE, METRIC, MODE, STATUS = "hpo.space", "hpo.metric", "hpo.mode", "hpo.status"
OUTCOME, DIAGNOSIS, PRUNED_AT = run_files.OUTCOME_TAG, run_files.DIAGNOSIS_TAG, "hpo.pruned_at_epoch"
#: On a trial whose last report had one: the health monitor's message, its diagnosis with the
#: evidence ("loss explosion: loss 4.4e+03 > 100 x its early median 26.2"): why it was stopped.
HEALTH_MESSAGE = run_files.HEALTH_MESSAGE_TAG
EXPORTED_TRIAL, EXPORTED_RUN = "hpo.exported_trial", "hpo.exported_run"
PARENT_RUN_ID = "mlflow.parentRunId"  # MLflow's own: the UI nests the child under its parent
DESCRIPTION = run_files.DESCRIPTION_TAG  # MLflow's own: the run page's description
BEST_TRIAL = "hpo.best_trial"  #: on the parent: the id of the best completed trial
BEST_PARAMS = "hpo.best_params"  #: on the parent: that trial's sampled params, ``key=value, ...``
#: On the parent of a search with an Optuna study (TPE): its storage's URL (``sqlite:///...``) and
#: the study's name in it, for ``optuna.load_study`` and ``optuna-dashboard``. (The study's trials
#: carry ``hpo.trial_id`` as a user attribute: the Tune trial, i.e. the child run.)
OPTUNA_STORAGE, OPTUNA_STUDY = "hpo.optuna_storage", "hpo.optuna_study"
#: On the experiment: the view MLflow 3's UI opens it in, set to the model-training one (the runs
#: table) unless the experiment already has a kind (named in ``model/run_files.py``: production
#: training sets it too).
EXPERIMENT_KIND = run_files.EXPERIMENT_KIND_TAG
MODEL_TRAINING = run_files.MODEL_TRAINING_KIND
#: On the experiment: a view of its runs table the UI opens with ``?viewStateShareKey=trials`` (MLflow
#: 3's shared views: the tag ``mlflow.sharedViewState.<key>`` holds the view as JSON). The table's
#: columns cannot be chosen in a URL; this view brings them: the trials, best first, with their
#: outcome, metric and sampled params (:func:`hpo.tracking.share_trials_view`, :func:`trials_view_url`).
SHARED_VIEW_PREFIX, TRIALS_VIEW = "mlflow.sharedViewState.", "trials"
#: Values of ``hpo.role`` and of the parent's ``hpo.status`` (FINISHED or INTERRUPTED).
PARENT, TRIAL = "parent", "trial"
FINISHED: Final = "finished"
SearchStatus = Literal["finished", "interrupted"]

# -- artifacts -------------------------------------------------------------------------------------
SPACE_ARTIFACT = "search_space.yaml"
SUMMARY_ARTIFACT = "summary.csv"
TRIAL_CONFIG_ARTIFACT = "trial_config.yaml"  #: the trial's full TrainConfig (what the export reads)
CURVES_ARTIFACT = "learning_curves.png"
EXPORT_ARTIFACT = "best.yaml"
#: A recovered trial's config with its recoveries' changes (named where the trainer writes it).
EFFECTIVE_CONFIG_ARTIFACT = run_files.EFFECTIVE_CONFIG_FILE
RECOVERIES_ARTIFACT = run_files.RECOVERIES_FILE  #: a recovered trial's recovery events (JSON)
REPORT_ARTIFACT_DIR = "report"

# -- outcomes (``hpo.outcome``) --------------------------------------------------------------------
RUNNING, COMPLETED, PRUNED, ERROR = "running", "completed", "pruned", "error"
INTERRUPTED: Final = "interrupted"  #: a literal, like FINISHED: both are a SearchStatus
STOPPED = "stopped:"  #: the prefix of ``stopped:<diagnosis>``; INTERRUPTED is also a parent's status
RECOVERED = "recovered:"  #: the prefix of ``recovered:<diagnosis>``: the trainer rolled back and fixed it
#: The health monitor's "nothing wrong" (the ``hpo.diagnosis`` of a run it never flagged).
HEALTHY = LABELS[0]
UNKNOWN = "unknown"  #: a diagnosis (or an outcome) that was never recorded


def stopped(diagnosis: str) -> str:
    """The outcome of a trial the health monitor stopped for ``diagnosis``."""
    return f"{STOPPED}{diagnosis}"


def is_stopped(outcome: str) -> bool:
    return outcome.startswith(STOPPED)


def recovered(diagnosis: str) -> str:
    """The outcome of a trial that ran to its end after recovering from ``diagnosis``."""
    return f"{RECOVERED}{diagnosis}"


def is_recovered(outcome: str) -> bool:
    return outcome.startswith(RECOVERED)


def recovered_by_health(report: Mapping[str, Any]) -> bool:
    """Whether the run has recovered (``health.on_failure: recover``) at least once by this report."""
    count = report.get(K.HEALTH_RECOVERIES)
    return is_number(count) and count > 0


def stopped_by_health(report: Mapping[str, Any]) -> bool:
    """Whether the health monitor stopped the run at this report."""
    return report.get(K.HEALTH_STOP) == 1


def diagnosis_of(report: Mapping[str, Any]) -> str:
    return str(report.get(K.HEALTH_DIAGNOSIS) or UNKNOWN)


@dataclass(frozen=True)
class TrialEnd:
    """How a trial that ended on its own ended."""

    outcome: str
    """``stopped:<diagnosis>``, ``completed`` or ``pruned``."""
    pruned_at: int | None = None
    """The last epoch a pruned trial reached."""


def trial_end(last: Mapping[str, Any], max_epochs: int) -> TrialEnd:
    """From a trial's last report: stopped when the health monitor stopped it, else completed at
    ``max_epochs`` (``recovered:<diagnosis>`` when it got there after a recovery), else pruned (by
    ASHA at a rung, or by the time budget); a report without an epoch counts as epoch 0. (Errored
    and interrupted trials are told apart by their callers.)"""
    if stopped_by_health(last):
        return TrialEnd(stopped(diagnosis_of(last)))
    epoch = int(last[K.EPOCH]) if is_number(last.get(K.EPOCH)) else 0
    if epoch < max_epochs:
        return TrialEnd(PRUNED, epoch)
    if recovered_by_health(last):
        return TrialEnd(recovered(str(last.get(K.HEALTH_RECOVERED_FROM) or UNKNOWN)))
    return TrialEnd(COMPLETED)


# -- the search metric's penalty -------------------------------------------------------------------

#: The search metric of a trial the health monitor stopped, for ``mode: max``. Every maximised
#: metric of a search (``model.report_keys.METRIC_MODES``: AP, precision, recall, mean IoU, TP) is >= 0.
PENALTY_MAX = -1.0
#: The same for ``mode: min``. The minimised metrics are validation counts (FP, FN), bounded by
#: images x ``postprocess.max_detections`` (WIDER FACE val: 3,226 x 200), far below this.
PENALTY_MIN = 1.0e12
#: What a non-finite number in a report becomes (NaN and +inf: this; -inf: minus this). In a
#: report they come from a blown-up loss or gradient norm, so "huge" is the faithful reading; it
#: stays finite in float32 (TensorBoard, MLflow plots) and is recognisable in any table.
NONFINITE_FILL = 1.0e30
#: ``raw/<metric>`` in a result: the metric's own value, also where the penalty replaced it.
RAW_PREFIX = "raw/"
#: In every result of a trial, and a child run's metrics: images of each split the trial could not
#: use (missing or undecodable files, skipped and counted, never fatal).
TRAIN_SKIPPED, VAL_SKIPPED = "data/train_skipped", "data/val_skipped"


def penalty(mode: Literal["max", "min"]) -> float:
    """The finite search-metric value that is worse than any real one in this ``mode``."""
    if mode == "max":
        return PENALTY_MAX
    if mode == "min":
        return PENALTY_MIN
    raise ValueError(f"mode must be 'max' or 'min' (got {mode!r})")


def measured(points: Iterable[tuple[int, float]], mode: Literal["max", "min"]) -> list[tuple[int, float]]:
    """A search metric's history without its penalty values: the search's stand-in, not a measurement."""
    worst = penalty(mode)
    return [(step, value) for step, value in points if value != worst]


# -- commands printed for the user -----------------------------------------------------------------


def shell_path(path: str | os.PathLike[str]) -> str:
    """``path`` as a command line shows it: relative to the working directory when inside it (with
    a ``./`` where it would otherwise be a bare name the shell looks up on ``PATH``), else absolute."""
    absolute = os.path.abspath(path)
    try:
        relative = os.path.relpath(absolute)
    except ValueError:  # another drive (Windows)
        return absolute
    if relative == os.pardir or relative.startswith(os.pardir + os.sep):
        return absolute
    return relative if os.sep in relative else f".{os.sep}{relative}"


def command(*words: str | os.PathLike[str]) -> str:
    """A shell command line of ``words``, each quoted where the shell needs it."""
    return " ".join(shlex.quote(os.fspath(w)) for w in words)


def python_command(*args: str | os.PathLike[str]) -> str:
    """A command line that runs ``args`` with the interpreter running now (``.venv/bin/python ...``):
    a bare ``python`` is whatever the shell finds first, and the README's quick start never
    activates its virtual environment."""
    return command(shell_path(sys.executable) if sys.executable else "python", *args)


def script_command(script: str, *args: str | os.PathLike[str]) -> str:
    """:func:`python_command` of one of ``hpo/``'s scripts (``export.py``), its path shown from the
    working directory (``hpo/export.py`` in the repository's root)."""
    return python_command(shell_path(Path(__file__).resolve().parent / script), *args)


def trials_view_url(base: str, experiment_id: str, view: str = TRIALS_VIEW) -> str:
    """The MLflow UI's address of experiment ``experiment_id``'s runs table in the shared ``view``,
    in the model-training sidebar (``workflowType=machine_learning``) whatever the browser chose last."""
    return f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs?workflowType=machine_learning&viewStateShareKey={view}"


def tool_command(tool: str, *args: str | os.PathLike[str], module: str | None = None) -> str:
    """A command line of the console script ``tool`` installed beside the running interpreter
    (``.venv/bin/mlflow ui ...``); without one there, ``python -m module`` when ``module`` is
    given (else the path anyway: the script to install there)."""
    script = Path(sys.executable).parent / tool if sys.executable else Path(tool)
    if module is not None and not script.exists():
        return python_command("-m", module, *args)
    return command(shell_path(script), *args)
