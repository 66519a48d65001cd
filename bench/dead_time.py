"""Dead time between trials: where a search's trial slots go when no trial is training.

Runs a real search (``hpo/search.py``'s ``main``, in this process: a local Ray, MLflow in a SQLite
file, the default ``cpu-mini`` space unless told otherwise) with timing probes installed around
it, and breaks each trial slot down into training (the trainer's epochs) and everything else:

* the trial's side (in the worker, through a wrapper around ``hpo.trainable.train_trial`` that
  patches the worker's copies of the trainer and Tune): the worker process's start (``/proc``),
  the trial function's entry, ``Trainer`` built, each epoch's start and end, the checkpoint write,
  the sample detections, ``tune.report`` and its return (the driver's round trip);
* the driver's side (patched in this process): Tune asking for the trial's actor (a new one, or a
  cached one reset), the actor started, the result received, the trial complete; the tracking
  callback's hooks and their parts (run creation, per-epoch logging, end-of-trial artifacts,
  wherever they run), the searcher's ``suggest``, Tune's experiment checkpoints.

A slot is one trial's worth of resources (``resources.cpu`` here); trials are placed on slots
in the order Tune started them. Dead time = slot time - training; the tail (a slot idle after
its last trial because no trial is left to start) is not dead time between trials and is left
out, as is the head (Ray's start-up before the first trial). ``slot s per trial`` is the slots'
time from their first trial's request to their last trial's end, over the trials, as in
``bench/scaling.py`` but without its tail.

    python bench/dead_time.py                              # the default search, as it ships (~5 min on 2 cores)
    python bench/dead_time.py --variant no-reuse --variant default --variant no-reuse --variant default
    python bench/dead_time.py --trials 6 --epochs 3 --out /tmp/dt

Variants (the cuts switched off, by patching this process and the workers, to measure what each
is worth): ``default`` (as shipped), ``no-reuse`` (a fresh worker process per trial:
``hpo.search.REUSE_ACTORS``), ``sync-tracking`` (the MLflow callback's writes on Tune's loop:
``hpo.tracking.BACKGROUND_WRITES``), ``draw-every-epoch`` (sample detections after
every epoch, not only where a trial may end: ``hpo.trainable.last_chance_epochs``), ``before``
(all three off: the search as it was).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import yaml  # noqa: E402
from ray import cloudpickle  # noqa: E402

from hpo import trainable as _trainable_mod  # noqa: E402
from model import trainer as _trainer_mod  # noqa: E402
from bench.machine import load_average, machine_info, machine_line, write_results  # noqa: E402
from hpo.space import load_space  # noqa: E402

VARIANTS = ("default", "no-reuse", "sync-tracking", "draw-every-epoch", "before")
_EVENTS_ENV = "HPO_BENCH_EVENTS_DIR"
_DRAW_ENV = "HPO_BENCH_DRAW_EVERY_EPOCH"


# -- the trial's side (runs in the Ray workers) ---------------------------------------------------------


def _proc_start() -> float:
    """This process's start, wall clock (Linux ``/proc``)."""
    ticks = os.sysconf("SC_CLK_TCK")
    fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
    start_ticks = int(fields[19])  # field 22 of stat, counted after the ")" that ends the name
    boot = next(float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines() if line.startswith("btime"))
    return boot + start_ticks / ticks


_WORKER: dict[str, Any] = {"trials": {}}  # trials: thread id -> the trial it trains (a reused worker runs several)


def _event(name: str, **extra: Any) -> None:
    record = {"t": time.time(), "pid": os.getpid(), "trial": _WORKER["trials"].get(threading.get_ident()), "event": name, **extra}
    with open(Path(_WORKER["dir"]) / f"worker-{os.getpid()}.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")


def _install_worker_probes(events_dir: str) -> None:
    """Once per worker process: wrap the trainer's and Tune's calls that a trial makes."""
    if "dir" in _WORKER:
        return
    import ray.tune

    trainable, trainer_mod = _trainable_mod, _trainer_mod
    _WORKER.update(dir=events_dir, first=True)
    if os.environ.get(_DRAW_ENV) == "1" and hasattr(trainable, "last_chance_epochs"):
        trainable.last_chance_epochs = lambda space: None  # every epoch, as before
    cls = trainer_mod.Trainer

    def around(owner: Any, attr: str, name: str) -> None:
        original = getattr(owner, attr)

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            _event(f"{name}_start")
            try:
                return original(*args, **kwargs)
            finally:
                _event(f"{name}_end")

        setattr(owner, attr, wrapper)

    around(cls, "__init__", "build")
    around(cls, "run_epoch", "epoch")
    around(cls, "save_checkpoint", "ckpt")
    around(cls, "load_checkpoint", "restore")
    around(trainable, "_draw_detections", "draw")
    around(ray.tune, "report", "report")


def timed_train_trial(sampled: dict[str, Any], **kwargs: Any) -> None:
    """``hpo.trainable.train_trial`` with the probes installed (the bench's trainable).

    Shipped by value (this module is not importable in the workers); the modules it names
    (``hpo.trainable``, ``model.trainer``) by reference, so a worker imports them when it
    loads the trainable, before its actor counts as started, as with the real one."""
    events_dir = os.environ[_EVENTS_ENV]
    first = "dir" not in _WORKER
    _install_worker_probes(events_dir)
    from ray import tune

    _WORKER["trials"][threading.get_ident()] = tune.get_context().get_trial_id()
    if first:
        _event("proc_start", at=_proc_start())
    _event("enter", first_in_process=first)
    try:
        _trainable_mod.train_trial(sampled, **kwargs)
    finally:
        _event("exit")


# -- the driver's side ---------------------------------------------------------------------------------


class DriverProbes:
    """Timestamps of Tune's and the tracking callback's work in this (the driver's) process."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._undo: list[tuple[Any, str, Any]] = []

    def record(self, name: str, trial: str | None, start: float, end: float | None = None) -> None:
        with self._lock:
            self.events.append({"event": name, "trial": trial, "t": start, "end": end if end is not None else start,
                                "thread": threading.current_thread().name})  # fmt: skip

    def wrap(self, owner: Any, attr: str, name: str, trial_of: Any = None) -> None:
        original = getattr(owner, attr)
        probes = self

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            start = time.time()
            try:
                return original(*args, **kwargs)
            finally:
                trial = None
                if trial_of is not None:
                    with contextlib.suppress(Exception):
                        trial = trial_of(args, kwargs)
                probes.record(name, trial, start, time.time())

        self._undo.append((owner, attr, original))
        setattr(owner, attr, wrapper)

    def undo(self) -> None:
        for owner, attr, original in reversed(self._undo):
            setattr(owner, attr, original)
        self._undo.clear()


def _trial_arg(index: int):
    def get(args: tuple, kwargs: dict) -> str | None:
        trial = kwargs.get("trial", args[index] if len(args) > index else None)
        return getattr(trial, "trial_id", trial)

    return get


def _tracked_actor_trial(controller_attr: str = "_actor_to_trial"):
    def get(args: tuple, kwargs: dict) -> str | None:
        controller, tracked = args[0], args[1]
        trial = getattr(controller, controller_attr).get(tracked)
        return trial.trial_id if trial is not None else None

    return get


def install_driver_probes(probes: DriverProbes) -> None:
    from ray.tune.execution.tune_controller import TuneController
    from ray.tune.search import ConcurrencyLimiter

    import hpo.tracking as tracking

    probes.wrap(TuneController, "_schedule_trial_actor", "actor_requested", _trial_arg(1))
    probes.wrap(TuneController, "_schedule_trial_reset", "actor_reset_requested", _trial_arg(1))
    probes.wrap(TuneController, "_actor_started", "actor_started", _tracked_actor_trial())
    probes.wrap(TuneController, "_on_training_result", "result_received", _trial_arg(1))
    probes.wrap(TuneController, "stop_trial", "trial_stop", _trial_arg(1))
    probes.wrap(TuneController, "checkpoint", "experiment_checkpoint")
    probes.wrap(ConcurrencyLimiter, "suggest", "searcher_suggest")
    cb = tracking.MlflowTrialCallback
    for hook in ("on_trial_start", "on_trial_result", "on_trial_complete", "on_trial_error", "on_experiment_end"):
        probes.wrap(cb, hook, f"cb.{hook}", _trial_arg(3))
    for part in ("_start", "_result", "_complete", "_end", "_artifacts"):
        if hasattr(cb, part):
            probes.wrap(cb, part, f"cb{part}", _trial_arg(1))


# -- variants (cuts switched off in this process) ----------------------------------------------------------


@contextlib.contextmanager
def variant_patches(variant: str):
    """Switch the cuts off that ``variant`` names; the default changes nothing."""
    import hpo.search as search
    import hpo.tracking as tracking

    undo: list[tuple[Any, str, Any]] = []

    def patch(owner: Any, attr: str, value: Any) -> None:
        undo.append((owner, attr, getattr(owner, attr)))
        setattr(owner, attr, value)

    off = {"before": {"reuse", "async", "draw"}, "no-reuse": {"reuse"}, "sync-tracking": {"async"},
           "draw-every-epoch": {"draw"}}.get(variant, set())  # fmt: skip
    if "reuse" in off and hasattr(search, "REUSE_ACTORS"):
        patch(search, "REUSE_ACTORS", False)
    if "async" in off and hasattr(tracking, "BACKGROUND_WRITES"):
        patch(tracking, "BACKGROUND_WRITES", False)
    if "draw" in off:
        os.environ[_DRAW_ENV] = "1"  # read by the workers (a local Ray's inherit the driver's environment)
    try:
        yield
    finally:
        os.environ.pop(_DRAW_ENV, None)
        for owner, attr, value in reversed(undo):
            setattr(owner, attr, value)


# -- one run ---------------------------------------------------------------------------------------------


def space_file(directory: Path, space: str, trials: int | None, epochs: int | None) -> Path:
    raw = load_space(space).as_dict()
    if trials is not None:
        raw["budget"]["num_samples"] = trials
    if epochs is not None:
        raw["budget"]["max_epochs"] = epochs
    path = directory / f"{raw['name']}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def run(variant: str, space: Path, data: Path, work: Path, report: bool) -> dict[str, Any]:
    import hpo.search as search

    run_dir = Path(tempfile.mkdtemp(prefix=f"{variant}-", dir=work))
    events_dir = run_dir / "events"
    events_dir.mkdir()
    probes = DriverProbes()
    original_trainable = search.train_trial
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    os.environ[_EVENTS_ENV] = str(events_dir)  # the local workers inherit it
    search.train_trial = timed_train_trial
    install_driver_probes(probes)
    args = ["--space", str(space), "--data", str(data), "--storage-path", str(run_dir / "ray"),
            "--tracking-uri", f"sqlite:///{run_dir / 'mlflow.db'}"] + ([] if report else ["--no-report"])  # fmt: skip
    load = load_average()
    start = time.time()
    try:
        with variant_patches(variant), contextlib.redirect_stdout(open(run_dir / "search.log", "w")):  # noqa: SIM115
            rc = search.main(args)
    finally:
        end = time.time()
        search.train_trial = original_trainable
        probes.undo()
        os.environ.pop(_EVENTS_ENV, None)
    if rc != 0:
        raise SystemExit(f"the search ({variant}) exited {rc}; log {run_dir / 'search.log'}")
    worker = [json.loads(line) for f in sorted(events_dir.glob("worker-*.jsonl")) for line in f.read_text().splitlines()]
    (events_dir / "driver.json").write_text(json.dumps(probes.events))
    result = analyse(probes.events, worker, slots=_slots(space))
    result.update(variant=variant, command_wall_s=end - start, load_average_at_start=load, load_average_at_end=load_average(),
                  run_dir=str(run_dir))  # fmt: skip
    return result


def _slots(space: Path) -> int:
    raw = yaml.safe_load(space.read_text())
    limit = raw["budget"].get("max_concurrent_trials")
    cpus = os.cpu_count() or 1
    by_cpu = int(cpus // raw["resources"]["cpu"])
    return min(limit, by_cpu) if limit else by_cpu


# -- the breakdown ---------------------------------------------------------------------------------------

#: The parts of a slot's time besides training, in the order a trial meets them. Each instant of a
#: slot counts once, for the first part of this list (training before all) that covers it.
PARTS = (
    ("trial_stop", "driver ends the trial (`stop_trial`: scheduler and searcher told, tracking callback's `on_trial_complete`)"),
    ("actor_started", "driver starts the trial on its actor (`_actor_started`: tracking callback's `on_trial_start`)"),
    ("checkpoint", "checkpoint written (`torch.save` of last.pt)"),
    ("draw", "sample detections drawn"),
    ("report", "`tune.report`: checkpoint persisted, result to the driver and back (until the next epoch may start)"),
    ("setup", "trial function entered -> first epoch (config, data sets, model, checkpoint restore)"),
    ("spawn", "actor asked for -> its worker process started (new process only)"),
    (
        "worker_init",
        "worker process started (or cached actor asked for) -> trial function entered (Ray worker, imports, actor set-up, reset)",
    ),
    ("between_trials", "previous trial ended -> next trial's actor asked for (Tune's loop: searcher, bookkeeping)"),
    ("other", "the rest inside a trial (tune_metrics, Tune's bookkeeping between results)"),
)


def _classify(lane_start: float, lane_end: float, intervals: list[tuple[str, float, float]]) -> dict[str, float]:
    """Seconds of [lane_start, lane_end] per category; where categories overlap the one listed
    first in ``["train", *PARTS]`` wins; what none covers is ``other``."""
    order = ["train"] + [k for k, _ in PARTS]
    rank = {k: i for i, k in enumerate(order)}
    points = sorted({lane_start, lane_end, *(t for _, a, b in intervals for t in (a, b) if lane_start < t < lane_end)})
    out = dict.fromkeys(order, 0.0)
    for a, b in zip(points, points[1:]):
        mid = (a + b) / 2
        covering = [k for k, s, e in intervals if s <= mid < e]
        out[min(covering, key=rank.__getitem__) if covering else "other"] += b - a
    return out


def analyse(driver: list[dict[str, Any]], worker: list[dict[str, Any]], slots: int) -> dict[str, Any]:
    """Per trial its timeline, per slot its trials, and the slot time split into training and the
    parts of :data:`PARTS`."""
    per_trial: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    for e in worker:
        if e["trial"] is not None:
            per_trial[e["trial"]][e["event"]].append(e)
    proc_start = {e["pid"]: e["at"] for e in worker if e["event"] == "proc_start"}
    by_trial: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    for e in sorted(driver, key=lambda e: e["t"]):
        if e["trial"]:
            by_trial[e["trial"]][e["event"]].append(e)
    trials = []
    for trial_id, ev in per_trial.items():
        d = by_trial.get(trial_id, {})
        asked = d.get("actor_requested", []) + d.get("actor_reset_requested", [])
        stops = d.get("trial_stop", [])
        enters = ev.get("enter", [])
        if not enters or not stops or not ev.get("epoch_end"):
            continue
        requested = min(e["t"] for e in asked) if asked else enters[0]["t"]
        end = stops[-1]["end"]
        intervals: list[tuple[str, float, float]] = []

        for name, category in (("epoch", "train"), ("ckpt", "checkpoint"), ("draw", "draw"), ("report", "report")):
            for a, b in zip(ev.get(f"{name}_start", []), ev.get(f"{name}_end", [])):
                intervals.append((category, a["t"], min(b["t"], end)))
        intervals += [("trial_stop", e["t"], e["end"]) for e in stops]
        intervals += [("actor_started", e["t"], e["end"]) for e in d.get("actor_started", [])]
        first_epoch = ev["epoch_start"][0]["t"]
        for enter in enters:  # a retried trial enters again: each entry's set-up until its first epoch
            after = [e["t"] for e in ev["epoch_start"] if e["t"] >= enter["t"]]
            intervals.append(("setup", enter["t"], min(after, default=enter["t"])))
        enter = enters[0]
        new = enter["first_in_process"]
        started = proc_start.get(enter["pid"])
        if new and started is not None and started > requested:
            intervals.append(("spawn", requested, started))
            intervals.append(("worker_init", started, enter["t"]))
        else:
            intervals.append(("worker_init", requested, enter["t"]))
        started_on_driver = [e["t"] for e in d.get("actor_started", [])]
        trials.append({
            "trial": trial_id, "pid": enter["pid"], "new_process": new, "requested": requested, "enter": enter["t"],
            "actor_started": min(started_on_driver, default=requested),
            "first_epoch": first_epoch, "end": end, "epochs": len(ev["epoch_end"]), "retries": len(enters) - 1,
            "intervals": intervals,
        })  # fmt: skip
    trials.sort(key=lambda r: r["requested"])

    # Slots: each trial takes the slot that freed first (Tune asks for an actor once one is free).
    free: list[tuple[float, int]] = [(-1.0, i) for i in range(slots)]
    lanes: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for row in trials:
        free.sort()
        _, lane = free.pop(0)
        row["slot"] = lane
        lanes[lane].append(row)
        free.append((row["end"], lane))
    totals: dict[str, float] = defaultdict(float)
    slot_time = 0.0
    startup = []
    for lane_rows in lanes.values():
        for prev, row in zip(lane_rows, lane_rows[1:]):
            row["intervals"].append(("between_trials", prev["end"], row["requested"]))
        # A slot starts when its first trial does (its actor started, as bench/scaling.py counts):
        # the first worker's start-up is the search's, once per slot, not between trials.
        startup.append(lane_rows[0]["actor_started"] - lane_rows[0]["requested"])
        for i, row in enumerate(lane_rows):
            start = row["actor_started"] if i == 0 else lane_rows[i - 1]["end"]
            parts = _classify(start, row["end"], row["intervals"])
            row.update({f"{k}_s": v for k, v in parts.items()})
            for k, v in parts.items():
                totals[k] += v
            slot_time += row["end"] - start
            del row["intervals"]
    n = len(trials)
    train = totals.pop("train")
    dead = slot_time - train
    driver_parts: dict[str, dict[str, float]] = defaultdict(lambda: {"calls": 0, "total_s": 0.0, "max_s": 0.0, "on_loop_s": 0.0})
    for e in driver:
        d = driver_parts[e["event"]]
        took = e["end"] - e["t"]
        d["calls"] += 1
        d["total_s"] += took
        d["max_s"] = max(d["max_s"], took)
        if e["thread"] == "MainThread":
            d["on_loop_s"] += took
    return {
        "trials": n,
        "slots": slots,
        "new_processes": sum(r["new_process"] for r in trials),
        "epochs": sum(r["epochs"] for r in trials),
        "trial_phase_s": max(r["end"] for r in trials) - min(r["actor_started"] for r in trials),
        "startup_s_per_slot": statistics.mean(startup),
        "slot_s_per_trial": slot_time / n,
        "train_s_per_trial": train / n,
        "dead_s_per_trial": dead / n,
        "dead_share": dead / slot_time,
        "parts_s_per_trial": {k: totals[k] / n for k, _ in PARTS},
        "driver": dict(driver_parts),
        "per_trial": trials,
    }


# -- the cold import of the trainable, for reference --------------------------------------------------------


def cold_import_s(repeats: int = 3) -> list[float]:
    code = "import time; t = time.time(); import hpo.trainable; print(time.time() - t)"
    out = []
    for _ in range(repeats):
        proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
        out.append(round(float(proc.stdout.strip().splitlines()[-1]), 2))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variant", action="append", choices=VARIANTS, help="repeatable, run in the order given (default: default)")
    p.add_argument("--space", default="cpu-mini")
    p.add_argument("--trials", type=int, help="overrides budget.num_samples")
    p.add_argument("--epochs", type=int, help="overrides budget.max_epochs")
    p.add_argument("--data", type=Path, default=REPO / "data" / "wider-mini")
    p.add_argument("--report", action="store_true", help="build the HTML report at the end (not part of any slot)")
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    p.add_argument("--stem", default="dead_time")
    args = p.parse_args(argv)
    variants = args.variant or ["default"]

    import ray

    from model.data.mini import ensure_mini, generated_params

    machine = machine_info(ray=ray.__version__)
    data = args.data.resolve()
    ensure_mini(data, **generated_params(data))  # the driver would make it; done before timing
    work = Path(tempfile.mkdtemp(prefix="bench-dead-"))
    space = space_file(work, args.space, args.trials, args.epochs)
    _warm_cache(space, data)
    imports = cold_import_s()
    runs = []
    for variant in variants:
        print(f"{variant}: searching ...", flush=True)
        res = run(variant, space, data, work, args.report)
        runs.append(res)
        print(f"  {variant}: {res['command_wall_s']:.0f} s, slot {res['slot_s_per_trial']:.1f} s per trial, "
              f"dead {res['dead_s_per_trial']:.1f} s ({res['dead_share']:.0%}), load {res['load_average_at_start']}", flush=True)  # fmt: skip
    machine["load_average_at_end"] = load_average()
    raw = yaml.safe_load(space.read_text())
    out = {
        "benchmark": "dead time between trials: a search's trial slots split into training and the rest",
        "machine": machine,
        "settings": {"space": args.space, "num_samples": raw["budget"]["num_samples"], "max_epochs": raw["budget"]["max_epochs"],
                     "max_concurrent_trials": raw["budget"]["max_concurrent_trials"], "scheduler": raw["scheduler"]["type"],
                     "cpus_per_trial": raw["resources"]["cpu"], "tracking": "MLflow, SQLite file", "ray": "local"},
        "cold_import_hpo_trainable_s": imports,
        "runs": runs,
    }  # fmt: skip
    write_results(args.out, args.stem, out, markdown(out))
    return 0


def _warm_cache(space: Path, data: Path) -> None:
    """Build the decoded-image cache before timing (a search's first trials build it once per node)."""
    from hpo.space import load_space as load
    from model.engine import build_datasets

    s = load(str(space))
    cfg = s.trial_config({k: v for k, v in s.points_to_evaluate[0].items()} if s.points_to_evaluate else {})
    build_datasets(cfg.with_overrides({"data.root": str(data), "data.cache_dir": str(data / ".cache")}))


def markdown(out: dict[str, Any]) -> str:
    m, s = out["machine"], out["settings"]
    lines = [
        "# Dead time between trials", "",
        machine_line(m),
        f"Search: `{s['space']}`, {s['num_samples']} trials x up to {s['max_epochs']} epochs, {s['max_concurrent_trials']} at a time, "
        f"{s['cpus_per_trial']} CPU each, scheduler {s['scheduler']}; local Ray, {s['tracking']}. Cold `import hpo.trainable` "
        f"in a fresh process: {', '.join(f'{x:.1f}' for x in out['cold_import_hpo_trainable_s'])} s.", "",
        "| run | variant | load at start / end | command wall s | start-up s per slot (first worker) | trials (new worker processes) "
        "| epochs | slot s per trial | training s per trial | dead s per trial | dead share |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    for i, r in enumerate(out["runs"], 1):
        load = " / ".join(str(x[0]) if x else "-" for x in (r["load_average_at_start"], r["load_average_at_end"]))
        lines.append(f"| {i} | {r['variant']} | {load} | {r['command_wall_s']:.0f} | {r['startup_s_per_slot']:.1f} | "
                     f"{r['trials']} ({r['new_processes']}) | {r['epochs']} | {r['slot_s_per_trial']:.1f} | "
                     f"{r['train_s_per_trial']:.1f} | {r['dead_s_per_trial']:.1f} | **{r['dead_share']:.1%}** |")  # fmt: skip
    lines += ["", "Dead time per trial, by part (s per trial; share of the slot):", "",
              "| part | " + " | ".join(f"run {i} ({r['variant']})" for i, r in enumerate(out["runs"], 1)) + " |",
              "|---|" + "---|" * len(out["runs"])]  # fmt: skip
    for key, label in PARTS:
        cells = [
            f"{r['parts_s_per_trial'][key]:.2f} ({r['parts_s_per_trial'][key] / r['slot_s_per_trial']:.1%})" for r in out["runs"]
        ]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += ["", "The driver's work (s in all; on Tune's loop, i.e. the main thread, / anywhere; calls):", "",
              "| driver step | " + " | ".join(f"run {i}" for i in range(1, len(out["runs"]) + 1)) + " |",
              "|---|" + "---|" * len(out["runs"])]  # fmt: skip
    names = sorted({k for r in out["runs"] for k in r["driver"]})
    for name in names:
        cells = []
        for r in out["runs"]:
            d = r["driver"].get(name)
            cells.append(f"{d['on_loop_s']:.2f} / {d['total_s']:.2f} ({d['calls']})" if d else "-")
        lines.append(f"| `{name}` | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
