"""The Ray Tune trainable: one search trial is one :class:`model.trainer.Trainer` run.

Each epoch the trainer's flat report goes through :func:`tune_metrics` and on to Tune with a
checkpoint (``last.pt``), so a trial that failed, or a search that was interrupted, resumes
where it stopped; the epoch's sample detections (``detections.png``) go beside it at the epochs
that may be the trial's last (:func:`last_chance_epochs`), and after a recovery
(``health.on_failure: recover``) the trial's effective config and its recovery events
(:func:`save_recovery_files`), which the tracking callback logs from the trial's last checkpoint.
What Tune sees is sanitised: the scheduler (ASHA) and the sampler (Optuna) never receive NaN or inf. A NaN reaching them is silently mishandled: ASHA lets a NaN trial run
to the end, and Optuna's ``tell`` refuses it, leaving the trial RUNNING so that the sampler never
learns that its region diverges. A trial the health monitor stopped therefore reports a finite
*penalty*, worse than any real value of the search metric, while its true diagnosis travels in
``health/diagnosis`` and the metric's own value in ``raw/<metric>``.

Usage (the search entry point)::

    trainable = tune.with_resources(
        tune.with_parameters(train_trial, space=space.as_dict(), data_root=str(root.resolve())),
        {"cpu": space.resources.cpu, "gpu": space.resources.gpu},
    )
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, cast

import pyarrow.fs as pafs
import ray
import torch
from ray import tune

from hpo import layout as L
from hpo.checkpoints import stored_checkpoints
from hpo.cluster import cap_gpu_memory
from hpo.space import AshaSchedulerSpec, SearchSpace, space_from_dict
from hpo.values import is_number
from model.callbacks import save_recovery_record
from model.config import TrainConfig
from model.samples import DETECTIONS_FILE, save_sample_detections
from model.trainer import Trainer

__all__ = [
    "CHECKPOINT_NAME",
    "NODE_ID_KEY",
    "SETUP_KEY",
    "last_chance_epochs",
    "save_recovery_files",
    "train_trial",
    "tune_metrics",
]

_LOG = logging.getLogger(__name__)

#: The checkpoint file inside each reported Tune checkpoint.
CHECKPOINT_NAME = "last.pt"
#: Beside the checkpoint of a trial's last epoch: that epoch's result (what Tune was told), which a
#: trial restarted after its end reports again instead of training again.
FINAL_RESULT_NAME = "final_result.json"
#: The Ray node a trial's epoch ran on, in every report (Tune's ``node_ip`` cannot tell apart
#: nodes that share an address, and a trial restarted after a node loss moves).
NODE_ID_KEY = "ray/node_id"
#: Seconds from the trial function's entry to its first epoch (config, data sets, model, checkpoint
#: restore), in every report of that run of the trial: a trial's set-up cost, as Tune saw it.
SETUP_KEY = "time/setup_s"

_NONFINITE_KEY = "health/nonfinite"


def tune_metrics(report: Mapping[str, Any], metric: str, mode: Literal["max", "min"]) -> dict[str, Any]:
    """What Tune sees of one epoch's trainer report: finite numbers only, a penalty when stopped.

    * Every key is kept. Numbers stay numbers (``epoch``, ASHA's ``time_attr``, stays an int);
      a non-finite one becomes ``NONFINITE_FILL`` (``-NONFINITE_FILL`` for -inf), and
      ``health/nonfinite`` counts how many were replaced. Strings (``health/diagnosis``,
      ``health/message``) pass unchanged.
    * ``raw/<metric>`` is the metric's own value (made finite as above).
    * ``<metric>`` is :func:`hpo.layout.penalty` when the health monitor stopped the run
      (``health/stop == 1``; the trainer then reports zeros for validation, which would flatter a
      minimised metric), when it has recovered from a failure (``health.on_failure: recover``:
      the sampled configuration failed, which is what Optuna must learn, while the run goes on and
      ASHA judges it on ``raw/<metric>``), or when the metric itself is not finite; otherwise the
      value itself.

    Args:
        report: the flat dict :meth:`model.trainer.Trainer.run_epoch` returns.
        metric: the search metric, a key of ``report``.
        mode: ``"max"`` or ``"min"``, the metric's direction.

    Raises:
        ValueError: ``metric`` is not a number in ``report``, or ``mode`` is neither max nor min.
    """
    worst = L.penalty(mode)
    value = report.get(metric)
    if not is_number(value):
        numeric = sorted(k for k, v in report.items() if is_number(v))
        raise ValueError(f"the search metric {metric!r} is not a number in the trial's report; numeric keys: {numeric}")
    out: dict[str, Any] = {}
    replaced = 0
    for key, item in report.items():
        if is_number(item) and not math.isfinite(item):
            item = -L.NONFINITE_FILL if item < 0 else L.NONFINITE_FILL  # NaN compares False: +FILL
            replaced += 1
        out[key] = item
    out[f"{L.RAW_PREFIX}{metric}"] = out[metric]
    if L.stopped_by_health(report) or L.recovered_by_health(report) or not math.isfinite(value):
        out[metric] = worst
    out[_NONFINITE_KEY] = float(replaced)
    return out


def train_trial(sampled: dict[str, Any], *, space: dict[str, Any], data_root: str, cache_dir: str | None = None) -> None:
    """A Ray Tune function trainable: train the sampled configuration, reporting every epoch.

    Args:
        sampled: the sampled values, ``{dotted TrainConfig key: value}`` (what Tune passes).
        space: the search space as a plain dict (``SearchSpace.as_dict()``: it pickles, the
            pydantic model need not).
        data_root: absolute path of the dataset (each trial runs in its own working directory,
            so a relative path would point somewhere else on every trial).
        cache_dir: absolute path of the decoded-image cache, shared by the trials of a node
            (``~`` is expanded on the node the trial runs on: a node-local folder on a cluster);
            ``None`` keeps the space's setting (by default ``<data_root>/.cache``).

    Resumes from ``tune.get_checkpoint()`` when Tune restarts the trial (after a failure, or in a
    resumed search). The trial ends at ``budget.max_epochs`` or when the health monitor stops it.
    The search reuses its workers (``reuse_actors``): one process runs trial after trial, and
    each is built here from its own config and checkpoint only (the trainer seeds every RNG
    afresh; the thread count and GPU cap are set again), nothing carried over from the last.
    """
    entered = time.perf_counter()
    # Ray logs "Checkpoint successfully created at ..." at INFO for every report, forwarded to the
    # driver's console; its warnings (and this trial's own) still get there.
    logging.getLogger("ray.train._internal.storage").setLevel(logging.WARNING)
    search_space = space_from_dict(space, source=f"search space {space.get('name', '?')!r}")
    resources = _trial_resources()
    cap_gpu_memory(resources.get("GPU", 0.0))  # a GPU share: stay inside it (no-op on CPU)
    sampled_cfg = search_space.trial_config(sampled)  # as the tracking callback logs it (trial_config.yaml)
    cfg = _trial_config(sampled_cfg, data_root, cache_dir, gpu=resources.get("GPU", 0.0) > 0)
    # One intra-op thread per reserved CPU: torch's default (one per core) oversubscribes a node
    # that runs several trials side by side.
    torch.set_num_threads(max(1, int(resources.get("CPU", search_space.resources.cpu))))

    given = tune.get_checkpoint()
    stored = stored_checkpoints(given, CHECKPOINT_NAME)
    if given is not None and not stored:
        raise FileNotFoundError(
            f"no stored checkpoint of this trial holds {CHECKPOINT_NAME} (Tune restores it from {given.path})"
        )
    final = next((c for c in stored if _is_final(c)), None)
    if final is not None:
        # This trial ran to its end before (a driver killed before it recorded that): its final
        # result again, at once, rather than the trial again. (Copied first: Tune may store the
        # reported checkpoint under the very folder it came from.)
        with tempfile.TemporaryDirectory(prefix="trial-final-") as directory:
            final.to_directory(directory)
            result = json.loads((Path(directory) / FINAL_RESULT_NAME).read_text())
            tune.report(result, checkpoint=tune.Checkpoint.from_directory(directory))
        _LOG.info("already finished at epoch %s (%s): final result reported again", result.get("epoch"), final.path)
        return

    trainer = Trainer(cfg, log=_LOG.info, progress=False)
    for checkpoint in stored:  # Tune's own, then newest first (hpo/checkpoints.py); an unreadable one gives way
        try:
            with checkpoint.as_directory() as directory:
                trainer.load_checkpoint(Path(directory) / CHECKPOINT_NAME)
        except Exception as exc:  # noqa: BLE001 - any unreadable file: the next older checkpoint
            if checkpoint is stored[-1]:
                raise
            _LOG.warning("checkpoint %s unreadable (%s: %s): trying the one before", checkpoint.path, type(exc).__name__, exc)
        else:
            _LOG.info("resumed at epoch %d from %s", trainer.epoch, checkpoint.path)
            break

    draw_at = last_chance_epochs(search_space)
    setup_s = time.perf_counter() - entered
    while not trainer.finished:
        report = trainer.run_epoch()
        metrics = tune_metrics(report, search_space.metric, search_space.mode)
        metrics[NODE_ID_KEY] = ray.get_runtime_context().get_node_id()  # where it ran (nodes may share an IP)
        metrics[SETUP_KEY] = setup_s
        metrics.update(skipped_images(trainer))
        # Tune copies the directory to the trial's storage before report() returns.
        with tempfile.TemporaryDirectory(prefix="trial-ckpt-") as directory:
            trainer.save_checkpoint(Path(directory) / CHECKPOINT_NAME)
            save_recovery_files(trainer, sampled_cfg, Path(directory))
            if trainer.finished:
                (Path(directory) / FINAL_RESULT_NAME).write_text(json.dumps(metrics))
            if trainer.finished or draw_at is None or trainer.epoch in draw_at:
                _draw_detections(trainer, Path(directory) / DETECTIONS_FILE)
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(directory))


def skipped_images(trainer: Trainer) -> dict[str, float]:
    """How many images of each split the trial could not use (missing or undecodable files: each
    skipped and counted by the dataset, never fatal), as report keys the tracking callback logs."""
    counts = {}
    for key, dataset in ((L.TRAIN_SKIPPED, trainer.train_set), (L.VAL_SKIPPED, trainer.val_set)):
        report = dataset.report()
        counts[key] = float(len(report.missing_files) + len(report.corrupt_files))
    return counts


def _is_final(checkpoint: tune.Checkpoint) -> bool:
    """Whether a stored checkpoint is its trial's last epoch (it holds the final result)."""
    marker = cast("pafs.FileSystem", checkpoint.filesystem).get_file_info(f"{checkpoint.path}/{FINAL_RESULT_NAME}")
    return bool(marker.type == pafs.FileType.File)


def last_chance_epochs(space: SearchSpace) -> frozenset[int] | None:
    """The epochs after which the search may end a healthy trial, besides its last one.

    The tracking callback logs the sample detections of a trial's last checkpoint, so a trial
    draws them only where that checkpoint may be its last: at ``budget.max_epochs`` or a health
    stop (the trainable knows these itself) and at ASHA's rungs, where the scheduler decides
    (``grace_period * reduction_factor**(k + s)`` for bracket ``s``, below ``max_epochs``; a trial
    is judged at its first report at or past a rung, so a fractional rung is its ceiling). With a
    time budget any epoch may be the last: ``None``, draw every epoch. (A trial that errors has a
    picture only if its last checkpoint was taken at one of these epochs.)
    """
    if space.budget.time_budget_s is not None:
        return None
    spec = space.scheduler
    if not isinstance(spec, AshaSchedulerSpec):
        return frozenset()
    max_t, rf = space.budget.max_epochs, spec.reduction_factor
    rungs: set[int] = set()
    for s in range(spec.brackets):
        # Ray's _Bracket: int(log(max_t / min_t) / log(rf) - s + 1) rungs, at min_t * rf ** (k + s).
        count = int(math.log(max_t / spec.grace_period) / math.log(rf) - s + 1)
        rungs.update(math.ceil(spec.grace_period * rf ** (k + s) - 1e-9) for k in range(count))
    return frozenset(r for r in rungs if r < max_t)


def save_recovery_files(trainer: Trainer, sampled_cfg: TrainConfig, directory: Path) -> bool:
    """After the trial's first recovery, its record beside the checkpoint in ``directory``: the
    effective config (``effective_config.yaml``: ``sampled_cfg`` with the recoveries' changes) and
    the recovery events (``recoveries.json``); nothing before it. Returns whether it wrote them.

    The effective config is built on ``sampled_cfg``, the trial's config as the tracking callback
    logs it (``trial_config.yaml``), not on the trainer's, which holds this worker's absolute data
    and cache paths and its device: the export writes it as a production config, as it writes a
    completed trial's ``trial_config.yaml``.
    """
    events = trainer.recovery_events()
    if not events:
        return False
    save_recovery_record(directory, sampled_cfg.with_overrides(trainer.recovery.overrides), events)
    return True


def _draw_detections(trainer: Trainer, path: Path) -> None:
    """The epoch's sample detections, beside the checkpoint (the tracking callback logs the last)."""
    try:
        save_sample_detections(
            trainer.model,
            trainer.val_set,
            path,
            trainer.device,
            postprocess=trainer.cfg.postprocess.model_dump(),
            min_score=trainer.cfg.eval.score_threshold,
        )
    except Exception as exc:  # noqa: BLE001 - a picture must never end a trial
        _LOG.warning("no sample detections this epoch: %s: %s", type(exc).__name__, exc)


def _trial_config(cfg: TrainConfig, data_root: str, cache_dir: str | None, *, gpu: bool) -> TrainConfig:
    """The trial's config with absolute data paths and the device of its reserved resources."""
    overrides: dict[str, Any] = {
        "data.root": str(_absolute(data_root, "data_root")),
        "device": "cuda" if gpu else "cpu",
    }
    if cache_dir is not None:
        overrides["data.cache_dir"] = str(_absolute(cache_dir, "cache_dir"))
    elif cfg.data.cache and cfg.data.cache_dir is not None and not cfg.data.cache_dir.is_absolute():
        raise ValueError(
            f"data.cache_dir is the relative path {str(cfg.data.cache_dir)!r}: a trial runs in its own working "
            "directory, so pass an absolute cache_dir to train_trial"
        )
    return cfg.with_overrides(overrides)


def _absolute(path: str, name: str) -> Path:
    resolved = Path(path).expanduser()
    if not resolved.is_absolute():
        raise ValueError(f"{name} must be an absolute path (got {path!r}): a trial runs in its own working directory")
    return resolved


def _trial_resources() -> dict[str, float]:
    """``{"CPU": n, "GPU": m, ...}`` that Tune reserved for this trial."""
    return dict(tune.get_context().get_trial_resources().required_resources)
