"""Collapse-aware hyperparameter search for SSD face detectors: ``python hpo/search.py``.

With no arguments it runs the CPU demo: a local Ray, MLflow at ``sqlite:///mlflow.db``, the
generated mini set (created under ``data/wider-mini`` on first use) and the ``cpu-demo`` search
space. Ray Tune runs the trials, Optuna samples them, the health monitor stops trials that
diverge or collapse (a finite penalty teaches Optuna the region fails), ASHA prunes weak ones at
its rungs, and every trial is a child run of one parent run in MLflow.

    python hpo/search.py --space widerface-gpu --data /data/widerface --address auto \\
        --storage-path s3://bucket/ray --tracking-uri http://127.0.0.1:5000
    python hpo/search.py --resume        # continue an interrupted search
"""

from __future__ import annotations

import argparse
import os
import sys
from collections import Counter
from collections.abc import Collection, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict, cast

if __package__ in (None, ""):  # run as a script: make the repository's packages importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# Short trials checkpoint every few seconds; Tune would warn about snapshot frequency each time.
os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
# A tracking server that is down: MLflow's defaults (7 retries, backoff 2) block each call ~4.5 min.
# Here a call gives up after ~10 s of retries (3, backoff 1 s: 1 + 2 + 4 s) or a 20 s silence; the
# search goes on and says what was not recorded. The user's own settings win.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "3")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
# The console is hpo/console.py's (RunConfig(verbose=0) below). Tune's new output engine prints its
# configuration box, a TensorBoard hint and an error's result box even at verbose=0; its legacy
# engine (RAY_AIR_NEW_OUTPUT=0, the switch RunConfig's verbose documents) is silent there. Errors are still
# logged by Tune, and a trial's own warnings still reach the console.
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")

import optuna  # noqa: E402
import ray  # noqa: E402
from mlflow import MlflowClient  # noqa: E402
from ray import tune  # noqa: E402

from hpo import layout as L
from hpo import search_record
from hpo.checkpoints import refill_removed
from hpo.cluster import ClusterConnectionError, connect
from hpo.console import SearchConsole
from hpo.journal import JOURNAL_FILE
from hpo.preflight import PreflightError, run_checks
from hpo.report import build_report
from hpo.space import SearchSpace, SearchSpaceError, TpeSamplerSpec, load_space, space_from_dict
from hpo.stopping import HealthStopper, build_scheduler, build_searcher
from hpo.tracking import MlflowTrialCallback, finish_parent_run, open_parent_run
from hpo.trainable import train_trial
from model import report_keys as K
from model.config import DEFAULT_MINI_ROOT
from model.data.mini import ensure_mini, generated_params

if TYPE_CHECKING:
    from ray.tune.impl.tuner_internal import TunerInternal

DEFAULT_STORAGE = Path("ray_results")
#: The decoded-image cache on a cluster (``--address``): a folder on each node's own disk, ``~``
#: expanded on the node (the data root may be NFS, or synced from S3, where a cache would be slow
#: or shared by every node). A local search keeps it beside the data: ``<data root>/.cache``.
CLUSTER_CACHE_DIR = "~/.cache/ssd-face-hpo"
#: One worker process per trial slot runs trial after trial (Tune's ``reuse_actors``): a new trial
#: costs a reset of the actor (tens of milliseconds) instead of a new process importing torch, Ray
#: and the project (10-14 s a trial on average, up to 24 s, on 2 loaded cores: ``bench/dead_time.py``).
#: The trainable builds every trial from its own config and checkpoint only.
REUSE_ACTORS = True
#: Exit status of an interrupted search (the shell's for SIGINT: 128 + 2).
INTERRUPTED_EXIT = 130
#: Exit status of a search in which every trial errored (bad data, a bug): nothing was learned.
ALL_FAILED_EXIT = 1
#: Where a search with remote storage (``s3://``) journals the MLflow writes a tracking server did
#: not take (a local search keeps its journal in its own folder): the driver's own disk.
REMOTE_JOURNAL_DIR = Path("~/.cache/ssd-face-hpo/journals")
#: A TPE search's Optuna study (an RDB storage: ``optuna-dashboard sqlite:///<it>`` opens it): this
#: file in the search's folder, beside Tune's results, the tracking journal and the report.
OPTUNA_FILE = "optuna.db"
#: The same for a search with remote storage (``s3://``), where a sqlite file cannot live: on the
#: driver's disk, one file per search id, like the journal (``--resume`` it from the same driver).
REMOTE_OPTUNA_DIR = Path("~/.cache/ssd-face-hpo/optuna")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python hpo/search.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--space", default="cpu-demo", help="a search_spaces/ name or a YAML path (default: %(default)s)")
    p.add_argument("--data", type=Path, help="dataset root (default: the space's data.root; the mini set is generated there)")
    p.add_argument("--num-trials", type=int, help="overrides budget.num_samples")
    p.add_argument("--address", help="Ray cluster address ('auto' on a cluster; default: start a local Ray)")
    p.add_argument("--cpus-per-trial", type=float, help="overrides resources.cpu")
    p.add_argument("--gpus-per-trial", type=float, help="overrides resources.gpu (fractions share a GPU)")
    p.add_argument(
        "--storage-path", default=str(DEFAULT_STORAGE), help="Tune results: local, NFS or s3:// (default: %(default)s)"
    )
    p.add_argument(
        "--cache-dir",
        help=f"decoded-image cache, one per node (default: <data root>/.cache; with --address {CLUSTER_CACHE_DIR}, "
        "~ expanded on each node)",
    )
    p.add_argument("--name", help="the search's name in storage (default: the space's name)")
    p.add_argument("--tracking-uri", default=L.DEFAULT_TRACKING_URI, help="MLflow tracking URI (default: %(default)s)")
    p.add_argument("--experiment", help="MLflow experiment (default: the space's name)")
    p.add_argument("--resume", action="store_true", help="continue the interrupted search of this name")
    p.add_argument("--no-report", action="store_true", help="skip the HTML report at the end (hpo/report.py builds it later)")
    return p.parse_args(argv)


def resolve_space(args: argparse.Namespace) -> SearchSpace:
    """The space with the command line's overrides applied, validated again."""
    space = load_space(args.space)
    raw = space.as_dict()
    if args.num_trials is not None:
        raw["budget"]["num_samples"] = args.num_trials
    if args.cpus_per_trial is not None:
        raw["resources"]["cpu"] = args.cpus_per_trial
    if args.gpus_per_trial is not None:
        raw["resources"]["gpu"] = args.gpus_per_trial
    if args.data is not None:
        raw.setdefault("fixed", {})["data.root"] = str(args.data)
    return space_from_dict(raw, source=space.source)


def data_root(space: SearchSpace) -> Path:
    """Absolute data root (each trial runs in its own working directory); the mini set is made here."""
    root = Path(space.fixed.get("data.root", DEFAULT_MINI_ROOT)).expanduser().resolve()
    if space.fixed.get("data.source", "mini") == "mini":
        # Generated once by the driver rather than raced by the first trials.
        ensure_mini(root, **generated_params(root))
    elif not root.is_dir():
        raise SearchSpaceError(f"data.root {str(root)!r} does not exist (data.source: wider)")
    return root


def cache_dir(args: argparse.Namespace, root: Path) -> str:
    """Where the trials keep the decoded-image cache (``--cache-dir``; see :data:`CLUSTER_CACHE_DIR`).

    A path starting with ``~`` stays as it is, for each trial to expand on its own node; any
    other is made absolute here (a trial runs in its own working directory).
    """
    if args.cache_dir is None:
        return CLUSTER_CACHE_DIR if args.address is not None else str(root / ".cache")
    if args.cache_dir.startswith("~"):
        return cast(str, args.cache_dir)  # --cache-dir: a str (argparse's Namespace is untyped)
    return str(Path(args.cache_dir).resolve())


class _ParentClosing(TypedDict):
    """:func:`finish_parent_run`'s arguments but the tracking URI (what the journal keeps of a failed one)."""

    run_id: str
    summary_rows: list[dict[str, Any]]
    status: L.SearchStatus
    best: dict[str, Any] | None
    metric: str


def run_search(args: argparse.Namespace) -> int:
    space = resolve_space(args)
    name = args.name or space.name
    experiment = args.experiment or space.name
    storage = args.storage_path if "://" in args.storage_path else str(Path(args.storage_path).expanduser().resolve())
    search_dir = f"{storage.rstrip('/')}/{name}"
    checked = run_checks(
        name=name,
        tracking_uri=args.tracking_uri,
        experiment=experiment,
        address=args.address,
        root=Path(space.fixed.get("data.root", DEFAULT_MINI_ROOT)).expanduser().resolve(),
        source=space.fixed.get("data.source", "mini"),
        search_dir=search_dir,
        resume=args.resume,
        wider_ap=bool(space.fixed.get("eval.wider_ap", False)),
    )
    root = data_root(space)

    connect(args.address)
    record = search_record.stored(search_dir) if args.resume else None
    search_id = (record or search_record.create(search_dir, args.tracking_uri, experiment)).search_id
    # The Optuna study (TPE only: a grid needs no searcher) lives in an RDB storage the parent names.
    storage_url = optuna_storage(search_dir, search_id) if isinstance(space.sampler, TpeSamplerSpec) else None
    study_tags = {L.OPTUNA_STORAGE: storage_url, L.OPTUNA_STUDY: name} if storage_url else None
    parent = open_parent_run(args.tracking_uri, experiment, search_id, space, tags=study_tags)
    experiment_id = MlflowClient(args.tracking_uri).get_run(parent).info.experiment_id
    journal = journal_path(search_dir, search_id)
    trials = expected_trials(space) or f"up to {space.budget.num_samples}"  # 0: a time budget may end it sooner
    print(f"search {name!r}: space {space.source}, {trials} trials x up to {space.budget.max_epochs} epochs")
    cache = cache_dir(args, root)
    print(
        f"  data {root}: {checked} (image cache {cache})\n  results {search_dir}\n  MLflow {args.tracking_uri} (experiment {experiment!r}, parent run {parent})"
    )
    if storage_url:
        print(f"  Optuna {storage_url} (study {name!r})")

    trainable = tune.with_resources(
        tune.with_parameters(train_trial, space=space.as_dict(), data_root=str(root), cache_dir=cache),
        {"cpu": space.resources.cpu, "gpu": space.resources.gpu},
    )
    stopper = HealthStopper()
    callback = MlflowTrialCallback(args.tracking_uri, parent, search_id, space, space.budget.max_epochs, journal=journal)
    if args.resume and callback.journaled:
        # A previous driver's writes the tracking server never took, in their order, before any new one.
        done = callback.journaled
        if callback.replay_journal(skip_parent=True):
            print(f"  MLflow: {done} journaled writes of the interrupted search made")
    if args.resume and tune.Tuner.can_restore(search_dir):
        print("resuming: finished trials are kept, unfinished ones continue from their checkpoints")
        refill_removed(search_dir)  # a driver killed mid-registration: see hpo/checkpoints.py
        tuner = tune.Tuner.restore(search_dir, trainable=trainable, resume_errored=True)
        searcher = None  # restored inside the Tuner
    else:
        searcher = build_searcher(space, storage=storage_url, study_name=name)
        grid = searcher is None
        tuner = tune.Tuner(
            trainable,
            param_space=space.grid() if grid else {},
            tune_config=tune.TuneConfig(
                search_alg=searcher,
                scheduler=build_scheduler(space),
                num_samples=space.budget.num_samples,
                max_concurrent_trials=space.budget.max_concurrent_trials if grid else None,
                time_budget_s=space.budget.time_budget_s,
                reuse_actors=REUSE_ACTORS,
            ),
            run_config=tune.RunConfig(
                name=name,
                storage_path=storage,
                stop=stopper,
                callbacks=[callback, SearchConsole(space.metric, space.mode, space.budget.max_epochs)],
                failure_config=tune.FailureConfig(max_failures=2),
                checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
                verbose=0,  # the console prints instead (a restored search keeps both: they are in its run config)
            ),
        )
    results = tuner.fit()  # Ctrl-C: Tune saves the experiment state and returns early

    tracking = _tracking_callback(tuner)
    unfinished = tracking.unfinished
    if (args.resume or tracking.had_failures) and not tracking.journaled:
        # Tune's record is complete where MLflow's may not be (an outage, a driver killed between
        # a result and its write): every trial that ran gets its run, epochs, outcome, artifacts.
        # (With writes still journaled the server is down: --resume does it.)
        try:
            repaired = tracking.reconcile(cast("Iterable[tune.Result]", results), unfinished)  # see summarise
        except Exception as exc:  # noqa: BLE001 - the search is done: its summary must still be printed
            print(f"warning: MLflow was not reconciled with Tune's results ({_one_line(exc)}); --resume does it", file=sys.stderr)
        else:
            if repaired:
                print(f"MLflow reconciled with Tune's results: {repaired} trial run(s) completed")
    rows = summarise(results, space, unfinished)
    interrupted = any(r["outcome"] == L.INTERRUPTED for r in rows) or len(results) < expected_trials(space)
    status: L.SearchStatus = L.INTERRUPTED if interrupted else L.FINISHED
    closing: _ParentClosing = {
        "run_id": parent,
        "summary_rows": rows,
        "status": status,
        "best": best_trial(rows, space),
        "metric": space.metric,
    }
    try:
        if tracking.journaled:
            raise ConnectionError(f"{tracking.journaled} earlier writes are still waiting")
        finish_parent_run(args.tracking_uri, **closing)
    except Exception as exc:  # noqa: BLE001 - the search is done: its summary must still be printed
        tracking.journal_parent_finish(**closing)
        print(f"warning: the MLflow parent run {parent} was not closed ({_one_line(exc)})", file=sys.stderr)
    if tracking.journaled:
        print(
            f"warning: {tracking.journaled} MLflow writes are kept in {tracking.journal.path if tracking.journal else '?'}; "
            "once the tracking server answers, run the same command with --resume to write them "
            "(finished trials are not run again)",
            file=sys.stderr,
        )
    stored = stored_study(storage_url, name, finished=not interrupted) if storage_url else None
    dashboard = storage_url if stored is not None else None
    print_summary(
        rows,
        space,
        search_dir,
        args.tracking_uri,
        experiment,
        interrupted=interrupted,
        optuna_storage=dashboard,
        experiment_id=experiment_id,
    )
    if not interrupted and not args.no_report:
        write_report(args.tracking_uri, experiment, search_id, search_dir)
    if stored is not None:
        states = Counter(t.state.name for t in stored.trials)
        print(f"Optuna study: {dict(states)}")
    if rows and all(r["outcome"] == L.ERROR for r in rows):
        first = next((r.error for r in cast("Iterable[tune.Result]", results) if r.error is not None), None)  # see summarise
        print(f"\nsearch failed: every trial errored (first error: {_one_line(first)})", file=sys.stderr)
        return ALL_FAILED_EXIT
    if interrupted:
        print(
            f"\nsearch interrupted: {sum(r['outcome'] != L.INTERRUPTED for r in rows)} of {expected_trials(space)} trials finished. "
            "Continue it with the same command and --resume (finished trials are kept, unfinished ones "
            "continue from their last checkpoint)."
        )
        return INTERRUPTED_EXIT
    return 0


def _one_line(exc: BaseException | None) -> str:
    """An exception as one line (Tune wraps a trial's exception with its traceback in the text)."""
    if exc is None:
        return "unknown"
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[-1] if lines else ''}"[:300]


def write_report(tracking_uri: str, experiment: str, search_id: str, search_dir: str) -> None:
    """The search's HTML report (``hpo/report.py``) beside its results and on the parent run.

    Best effort: the search itself is done and recorded; a report that fails is a warning, and
    ``python hpo/report.py`` can build it again later.
    """
    out = Path(search_dir) / "report" if "://" not in search_dir else None  # None: ./reports/...
    try:
        result = build_report(tracking_uri, experiment, out=out, search_id=search_id)
    except Exception as exc:  # noqa: BLE001
        again = L.script_command(
            "report.py", "--experiment", experiment, "--search-id", search_id, "--tracking-uri", tracking_uri
        )
        print(f"warning: no report ({type(exc).__name__}: {exc}); build it with: {again}")
        return
    print(f"report:  {result.html}  (also on the parent run under report/)")


def expected_trials(space: SearchSpace) -> int:
    """How many trials a search that runs to its end has (0 with a time budget: it may end it sooner)."""
    return 0 if space.budget.time_budget_s is not None else space.num_trials


def _tracking_callback(tuner: tune.Tuner) -> MlflowTrialCallback:
    # A restored Tuner runs its own copy, unpickled from its run config: no public handle reaches it.
    # Ray types both Optional: a Tuner made in this driver (not through Ray Client) has its local
    # tuner, and its run config the callbacks the search passed.
    local = cast("TunerInternal", tuner._local_tuner)
    callbacks = cast("list[tune.Callback]", local.get_run_config().callbacks)
    return next(c for c in callbacks if isinstance(c, MlflowTrialCallback))


def journal_path(search_dir: str, search_id: str) -> Path:
    """The search's tracking journal (:mod:`hpo.journal`): in its folder, or on the driver's disk
    when the folder is remote."""
    if "://" in search_dir:
        return REMOTE_JOURNAL_DIR.expanduser() / f"{search_id}.jsonl"
    return Path(search_dir) / JOURNAL_FILE


def optuna_storage(search_dir: str, search_id: str) -> str:
    """The URL of the search's Optuna storage: :data:`OPTUNA_FILE` in its folder, or a file on the
    driver's disk when the folder is remote (:data:`REMOTE_OPTUNA_DIR`); the folder is made."""
    if "://" in search_dir:
        path = REMOTE_OPTUNA_DIR.expanduser() / f"{search_id}.db"
    else:
        path = Path(search_dir) / OPTUNA_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path.resolve()}"


def stored_study(storage: str, study_name: str, *, finished: bool) -> optuna.Study | None:
    """The search's Optuna study read back from its storage (``None``: not there, e.g. a search
    resumed from before the study was stored). For a ``finished`` search, a trial still RUNNING
    there is one Tune never ran to its end (asked for just before a driver was killed, then
    forgotten by ``--resume``, which restores Tune's last checkpoint): it is told FAIL."""
    path = storage.removeprefix("sqlite:///")
    if storage.startswith("sqlite:///") and not Path(path).is_file():
        return None
    try:
        study = optuna.load_study(study_name=study_name, storage=storage)
        if finished:
            for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
                study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
    except KeyError:  # no study of that name there
        return None
    except Exception as exc:  # noqa: BLE001 - the search is done: its summary must still be printed
        print(f"warning: the Optuna study in {storage} was not read ({_one_line(exc)})", file=sys.stderr)
        return None
    return study


def outcome_of(metrics: dict[str, Any], error: BaseException | None, max_epochs: int, unfinished: bool = False) -> str:
    """``completed``, ``pruned@<epoch>``, ``stopped:<diagnosis>``, ``error`` or ``interrupted``."""
    if error is not None:
        return L.ERROR
    if unfinished or K.EPOCH not in metrics:  # started, never reported: not pruned at epoch 0
        return L.INTERRUPTED
    end = L.trial_end(metrics, max_epochs)
    return end.outcome if end.pruned_at is None else f"{end.outcome}@{end.pruned_at}"


def summarise(results: tune.ResultGrid, space: SearchSpace, unfinished: Collection[str] = frozenset()) -> list[dict[str, Any]]:
    rows = []
    # A ResultGrid iterates through __getitem__ (the sequence protocol), which mypy does not take for __iter__.
    for result in cast("Iterable[tune.Result]", results):
        metrics = result.metrics or {}
        trial_id = metrics.get("trial_id", "?")
        rows.append(
            {
                "trial_id": trial_id,
                "outcome": outcome_of(metrics, result.error, space.budget.max_epochs, trial_id in unfinished),
                "epochs": int(metrics.get(K.EPOCH, 0)),
                space.metric: metrics.get(f"{L.RAW_PREFIX}{space.metric}", metrics.get(space.metric)),
                **{k: v for k, v in (result.config or {}).items()},
            }
        )
    return rows


def best_trial(rows: list[dict[str, Any]], space: SearchSpace) -> dict[str, Any] | None:
    """The completed trial with the best search metric (stopped and pruned trials never count)."""
    healthy = [r for r in rows if r["outcome"] == L.COMPLETED and r.get(space.metric) is not None]
    sign = 1 if space.mode == "max" else -1
    return max(healthy, key=lambda r: sign * r[space.metric]) if healthy else None


def print_summary(
    rows: list[dict[str, Any]],
    space: SearchSpace,
    search_dir: str,
    tracking_uri: str,
    experiment: str,
    *,
    interrupted: bool = False,
    optuna_storage: str | None = None,
    experiment_id: str | None = None,
) -> None:
    counts = Counter(r["outcome"].split("@")[0] for r in rows)
    print(f"\n== search {L.INTERRUPTED if interrupted else L.FINISHED} ==")
    print(f"trials: {len(rows)}  " + "  ".join(f"{k}: {v}" for k, v in sorted(counts.items())))
    for outcome in sorted({r["outcome"] for r in rows if r["outcome"] != L.COMPLETED}):
        ids = [r["trial_id"] for r in rows if r["outcome"] == outcome]
        print(f"  {outcome}: {', '.join(ids)}")
    best = best_trial(rows, space)
    if best is not None:
        params = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in best.items() if "." in k)
        print(f"best completed trial: {best['trial_id']}  {space.metric} {best[space.metric]:.4f}  ({params})")
    else:
        print("no trial completed healthy")
    print(f"results: {search_dir}")
    # The commands with the interpreter running now: after the README's quick start no virtual
    # environment is active, and a bare `python` or `mlflow` is not the one the search ran with.
    server = tracking_uri.startswith(("http://", "https://"))
    if not server:
        print(f"browse:  {L.tool_command('mlflow', 'ui', '--backend-store-uri', tracking_uri, module='mlflow')}")
    base = tracking_uri if server else "http://127.0.0.1:5000"
    url = L.trials_view_url(base, experiment_id) if experiment_id else base
    print(f"{'browse:  open' if server else '   then open'} {url}" + ("  (the trials, best first)" if experiment_id else ""))
    if server:
        print("         (on a cluster: ray attach cluster.yaml -p 5000 first)")
    export = L.script_command("export.py", "--experiment", experiment, "--out", L.EXPORT_ARTIFACT, "--tracking-uri", tracking_uri)
    print(f"export:  {export}")
    if optuna_storage is not None:
        dashboard = L.tool_command("optuna-dashboard", optuna_storage)
        print(f"optuna:  {dashboard}  (install it first: {L.python_command('-m', 'pip', 'install', 'optuna-dashboard')})")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return run_search(args)
    except (SearchSpaceError, ClusterConnectionError, PreflightError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        if ray.is_initialized():
            ray.shutdown()


if __name__ == "__main__":
    sys.exit(main())
