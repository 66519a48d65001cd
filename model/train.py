"""Production training of one SSD face detector, watched by the same health monitor as a trial.

    python -m model.train --config best.yaml [--data PATH] [--out runs/train] [--resume]
                          [--tracking-uri sqlite:///mlflow.db --experiment production] [--threads N]

With no config it trains the tiny SSD on the generated mini set (created on first use). Exit
status: 0 when training completed, 3 when the health monitor stopped it (the diagnosis is
printed), 2 for a bad config or command line.

Threads: ``--threads N``, else ``OMP_NUM_THREADS`` when set, else one torch thread per CPU that
neither a data-loader worker nor another process is using (:func:`default_threads`).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from model import report_keys as K
from model import run_files
from model.callbacks import Callback, Checkpointing, History
from model.config import ConfigError, TrainConfig, config_from_dict, load_config
from model.checkpoint import load_checkpoint
from model.dotted import flatten
from model.predict import find_ground_truth, predict_split
from model.samples import DETECTIONS_FILE, save_sample_detections
from model.trainer import Trainer

EXIT_STOPPED = 3
#: cgroup v2's CPU quota of this process's container ("max 100000", or "200000 100000": 2 CPUs).
CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")
#: The official easy / medium / hard AP of a finished run, beside its checkpoints.
OFFICIAL_FILE = "wider_ap.json"


class MlflowLogging(Callback):
    """Params once, one metrics row per epoch, the outcome as a tag; resumes into the same run.

    Its tags are a search trial's (``model/run_files.py``, re-exported by ``hpo/layout.py``) with the
    role ``production``: ``hpo.outcome``, ``hpo.diagnosis``, the health monitor's message, a
    description; a stopped run ends FAILED, as a stopped trial does."""

    def __init__(self, tracking_uri: str | None, experiment: str, cfg: TrainConfig, out_dir: Path) -> None:
        import mlflow  # imported here: plain training must not pay for it

        self.mlflow = mlflow
        mlflow.set_tracking_uri(tracking_uri or "sqlite:///mlflow.db")
        found = mlflow.set_experiment(experiment)
        if run_files.EXPERIMENT_KIND_TAG not in found.tags:
            # MLflow 3's UI opens the experiment on its runs table, not its GenAI view; a kind
            # someone chose (the UI's selector writes this tag) is left as it is.
            mlflow.set_experiment_tag(run_files.EXPERIMENT_KIND_TAG, run_files.MODEL_TRAINING_KIND)
        id_file = out_dir / "mlflow_run_id"
        run_id = id_file.read_text().strip() if id_file.exists() else None
        self.run = mlflow.start_run(run_id=run_id, run_name=None if run_id else out_dir.name)
        id_file.write_text(self.run.info.run_id)
        if run_id is None:
            mlflow.log_params(
                {k: json.dumps(v) if isinstance(v, list) else v for k, v in flatten(cfg.model_dump(mode="json")).items()}
            )
            mlflow.set_tag(run_files.ROLE_TAG, run_files.PRODUCTION_ROLE)

    def on_epoch_end(self, trainer: Trainer, report: dict[str, Any]) -> None:
        metrics = {k: float(v) for k, v in report.items() if isinstance(v, (int, float)) and math.isfinite(v) and k != K.EPOCH}
        self.mlflow.log_metrics(metrics, step=int(report[K.EPOCH]))
        self.mlflow.set_tag(run_files.DIAGNOSIS_TAG, report[K.HEALTH_DIAGNOSIS])

    def finish(
        self, outcome: str, files: list[Path], metrics: dict[str, float] | None = None, step: int = 0, message: str = ""
    ) -> None:
        """Log the outcome, the monitor's ``message`` (its diagnosis with the evidence) and ``files``; end the run."""
        if metrics:
            # At the last epoch's step, logged last: the run's value of these keys (with
            # eval.wider_ap the epochs' own, on the last model, are in the history before it).
            self.mlflow.log_metrics(metrics, step=step)
        description = run_files.run_description(f"Production training: {outcome} after epoch {step}.", message)
        tags = {run_files.OUTCOME_TAG: outcome, run_files.DESCRIPTION_TAG: description}
        if message:
            tags[run_files.HEALTH_MESSAGE_TAG] = message
        self.mlflow.set_tags(tags)
        for path in files:
            self.mlflow.log_artifact(str(path))
        self.mlflow.end_run(status="FINISHED" if outcome == "completed" else "FAILED")


def official_numbers(trainer: Trainer, out: Path, *, progress: bool) -> dict[str, float] | None:
    """The official WIDER FACE easy / medium / hard AP of the best checkpoint on all of val.

    Only when the data has the official ``.mat`` ground truth (the real set's ``wider_face_split``,
    or the generated mini set's). Predictions go to ``<out>/predictions`` in the official layout,
    the figures to ``<out>/wider_ap.json``; ``None`` without ground truth.
    """
    root = trainer.cfg.data.root
    gt = find_ground_truth(root)
    if gt is None:
        return None
    best = out / "best.pt"
    if best.exists():  # the weights an export would take, not the last epoch's
        trainer.model.load_state_dict(load_checkpoint(best)["model"])
    summary = predict_split(
        trainer.model,
        trainer.cfg,
        root,
        "val",
        out / "predictions",
        gt_dir=gt,
        overwrite=True,
        device=trainer.device,
        progress=progress,
    )
    print(summary.format())
    assert summary.aps is not None  # ground truth was given
    aps = {K.WIDER_AP[setting]: value for setting, value in summary.aps.items()}
    (out / OFFICIAL_FILE).write_text(json.dumps(aps, indent=2))
    return aps


def available_cpus(cpu_max: Path = CGROUP_CPU_MAX) -> int:
    """The CPUs this process may run on: its affinity, capped by a cgroup v2 quota (a container's
    ``--cpus``), which ``os.cpu_count()`` and torch's default both ignore."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    try:
        quota, period = cpu_max.read_text().split()[:2]
        if quota != "max":
            cpus = min(cpus, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):  # no cgroup v2 (or not readable): the affinity alone
        pass
    return cpus


def default_threads(cpus: int, loader_workers: int, load: float | None) -> int:
    """Torch's intra-op threads for a training run: one per CPU that neither a data-loader worker
    nor another process is using, at least one.

    Torch's default is one thread per core, and its OpenMP threads meet at the end of every op: a
    core that another process holds stalls every op of the run. On a busy 2-core machine an epoch
    of the tiny SSD on the mini set took 72 s with torch's default and 8 s with one thread (issue
    14). So: the CPUs (:func:`available_cpus`) less the loader's workers (``data.num_workers``:
    each is a process of its own, on one thread) and less the cores that others keep busy, read
    from the load average (``load``: ``os.getloadavg()``'s last minute, rounded; ``None`` where
    there is none). A search sets its trials' threads itself: one per CPU a trial reserves
    (``hpo/trainable.py``).
    """
    busy = 0 if load is None else int(max(0.0, load) + 0.5)
    return max(1, min(cpus - loader_workers, cpus - busy))


def training_threads(
    requested: int | None, loader_workers: int, environ: Mapping[str, str] = os.environ
) -> tuple[int | None, str]:
    """How many torch threads to set, and why: ``requested`` (``--threads``) when given; ``None``
    (torch's own, which read it at import) when ``OMP_NUM_THREADS`` is set; else :func:`default_threads`."""
    if requested is not None:
        return requested, "--threads"
    if environ.get("OMP_NUM_THREADS", "").strip():
        return None, f"OMP_NUM_THREADS={environ['OMP_NUM_THREADS'].strip()}"
    cpus = available_cpus()
    try:
        load: float | None = os.getloadavg()[0]
    except (AttributeError, OSError):  # no load average on this platform
        load = None
    load_text = "" if load is None else f", load {load:.1f}"
    return default_threads(cpus, loader_workers, load), f"{cpus} CPUs{load_text}, {loader_workers} loader workers"


def _resolve_config(args: argparse.Namespace) -> TrainConfig:
    overrides: dict[str, Any] = {}
    if args.data is not None:
        overrides["data.root"] = str(args.data)
    if args.epochs is not None:
        overrides["epochs"] = args.epochs
    if not args.resume:
        return load_config(args.config, overrides) if args.config else TrainConfig().with_overrides(overrides)
    checkpoint = args.out / "last.pt"
    if not checkpoint.exists():
        raise ConfigError(f"--resume: no checkpoint at {checkpoint}")
    saved = load_checkpoint(checkpoint)["config"]
    if args.config is None:
        return config_from_dict(saved, source=str(checkpoint)).with_overrides(overrides)
    cfg = load_config(args.config, overrides)
    _check_resumable(cfg, saved)
    return cfg


def _check_resumable(cfg: TrainConfig, saved: dict[str, Any]) -> None:
    """A resumed run may train longer, but not change what it is training."""
    before, now = flatten(saved), flatten(cfg.model_dump(mode="json"))
    changed = sorted(k for k in now if k != "epochs" and now[k] != before.get(k))
    if changed:
        details = ", ".join(f"{k}: {before.get(k)!r} -> {now[k]!r}" for k in changed)
        raise ConfigError(f"--resume: the config differs from the checkpoint's ({details})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m model.train", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", type=Path, help="YAML training config (default: tiny SSD on the mini set)")
    parser.add_argument("--data", type=Path, help="dataset root (overrides data.root)")
    parser.add_argument("--epochs", type=int, help="overrides epochs")
    parser.add_argument("--out", type=Path, default=Path("runs/train"), help="checkpoints and metrics (default: %(default)s)")
    parser.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    parser.add_argument("--tracking-uri", help="log to MLflow at this URI (default with --experiment: sqlite:///mlflow.db)")
    parser.add_argument("--experiment", help="MLflow experiment name (enables MLflow logging)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument(
        "--threads",
        type=int,
        help="torch threads (default: OMP_NUM_THREADS when set, else the CPUs that neither the loader's workers nor other processes use)",
    )
    args = parser.parse_args(argv)
    if args.threads is not None and args.threads < 1:
        parser.error(f"--threads must be at least 1 (got {args.threads})")

    try:
        cfg = _resolve_config(args)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    threads, why = training_threads(args.threads, cfg.data.num_workers)
    if threads is not None:
        torch.set_num_threads(threads)
    print(f"threads: {torch.get_num_threads()} ({why}; choose with --threads N or OMP_NUM_THREADS)")

    args.out.mkdir(parents=True, exist_ok=True)
    cfg.to_yaml(args.out / "config.yaml")
    history_file = args.out / "history.jsonl"
    if not args.resume:
        history_file.unlink(missing_ok=True)
    callbacks: list[Callback] = [Checkpointing(args.out), History(history_file)]
    tracking = None
    if args.experiment or args.tracking_uri:
        tracking = MlflowLogging(args.tracking_uri, args.experiment or "production", cfg, args.out)
        callbacks.append(tracking)
    trainer = Trainer(cfg, progress=not args.no_progress, callbacks=callbacks)
    print(f"train: {trainer.train_set.report()}\nval:   {trainer.val_set.report()}")
    if args.resume:
        trainer.load_checkpoint(args.out / "last.pt")
        print(f"resumed from {args.out / 'last.pt'} after epoch {trainer.epoch}")

    reports = trainer.fit()
    verdict = trainer.monitor.verdict
    final = reports[-1] if reports else {}
    outcome = f"stopped:{verdict.diagnosis}" if verdict.stop else "completed"
    (args.out / "metrics.json").write_text(json.dumps({"outcome": outcome, "best_val_ap": trainer.best_ap, **final}, indent=2))
    artifacts = [args.out / "config.yaml", args.out / "metrics.json", history_file]
    artifacts.append(
        save_sample_detections(
            trainer.model,
            trainer.val_set,
            args.out / DETECTIONS_FILE,
            trainer.device,
            postprocess=cfg.postprocess.model_dump(),
            min_score=cfg.eval.score_threshold,
        )
    )
    official = None if verdict.stop else official_numbers(trainer, args.out, progress=not args.no_progress)
    if official is not None:
        artifacts.append(args.out / OFFICIAL_FILE)
    if tracking:
        message = str(final.get(K.HEALTH_MESSAGE) or "")  # the last report's, as a trial's run keeps it
        tracking.finish(outcome, artifacts, metrics=official, step=trainer.epoch, message=message)
    if verdict.stop:
        print(f"training stopped: {verdict.message()}", file=sys.stderr)
        return EXIT_STOPPED
    print(f"done: best val AP {trainer.best_ap:.4f}; checkpoints and metrics in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
