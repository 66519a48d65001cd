"""Record the tabular benchmark: real learning curves of a search space's configurations.

Each configuration of :func:`bench.tabular.design.design` (the space's ``points_to_evaluate`` plus
a scrambled Sobol design) is trained to the space's full epoch budget by the production
:class:`model.trainer.Trainer`, its ``TrainConfig`` built exactly as a search trial's is
(``SearchSpace.trial_config`` then ``hpo.trainable._trial_config``), with the health monitor in
observe mode (``health.stop_on: []``: every verdict recorded, nothing stops). A few configurations
get extra seeds (``--noise-seeds``) to measure run-to-run noise.

A diverged run is not cut: with exploded or NaN weights the trainer keeps training and validating
(the model then detects nothing: AP 0), so every run has all its epochs, which is what a search
without stopping pays for (the recorded table has 6 epochs with a NaN training loss; their runs
completed). Only if an epoch raises after the monitor said ``diverged`` is the run recorded as
ended at that epoch (column ``ended``), as ``bench/failure_zoo.py`` does; none did.

Per epoch, one row: every key of the trainer's report, plus what the replay needs to play the
default stop rule (``HealthConfig().stop_on``) exactly: the verdicts raised in the epoch
(``health/verdicts``, JSON, with the step each fired at), the first one the default rule would
stop on (``health/default_stop``, its ``..._step`` and ``..._kind``: a step check stops the
epoch there, an epoch check after validation) and the seconds from the epoch's start to that
point (``time/to_default_stop_s``; a stopped epoch costs that, not the whole epoch). Also the
step-timed training part (``time/train_s``), the process CPU seconds of each epoch and to the
stopping point (``..._cpu_s``: on a shared machine the wall seconds carry the other jobs' load,
CPU seconds much less), the machine, the git commit and the run's wall time.

One Parquet part per finished (config, seed) under ``parts/`` (git-ignored): a re-run skips what
is there, so an interrupted recording continues. ``--consolidate`` (also done at the end) writes
``table.parquet`` from the parts.

``--recover``: the recovered runs (issue 18 item 4). Every configuration whose seed-0 run in
``table.parquet`` has a default stopping verdict (``health/default_stop`` at some epoch) is trained
again, same sizes, seed and epochs, with ``health.on_failure: recover`` and the trial's own
(default) ``stop_on``: the trainer rolls it back and applies the diagnosis's intervention
(``model/recovery.py``), within ``max_recoveries``, or stops it when that is spent (``ended``
says so). A recovery replays epochs, so such a run has more reports than epochs: ``report`` is
the running index of a run's reports (1-based, Tune's ``training_iteration``; ``epoch`` otherwise).
Parts under ``parts/recover/``, then ``table_recover.parquet``.

    python bench/tabular/record.py --time-one            # one run, timed, into a scratch folder
    nohup nice -n 10 env OMP_NUM_THREADS=1 python bench/tabular/record.py > /tmp/record.log 2>&1 &
    python bench/tabular/record.py --consolidate
    nohup nice -n 10 env OMP_NUM_THREADS=1 python bench/tabular/record.py --recover > /tmp/recover.log 2>&1 &
    python bench/tabular/record.py --consolidate --recover
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import torch  # noqa: E402

from bench.machine import load_average, machine_info  # noqa: E402
from bench.tabular.design import design  # noqa: E402
from hpo.search import data_root  # noqa: E402
from hpo.space import SearchSpace, load_space  # noqa: E402
from hpo.trainable import _trial_config  # noqa: E402 - the trial's own config step, reused
from model.health import HealthConfig, Verdict  # noqa: E402
from model.trainer import Trainer  # noqa: E402

HERE = Path(__file__).resolve().parent
PARTS = HERE / "parts"
TABLE = HERE / "table.parquet"
#: The recovered runs of the failing configurations (``--recover``).
RECOVER_PARTS = PARTS / "recover"
TABLE_RECOVER = HERE / "table_recover.parquet"
DEFAULT_STOP_ON = frozenset(HealthConfig().stop_on)
#: How many configurations get the extra seeds, chosen from the seed-0 results (see :func:`noise_configs`).
NOISE_CONFIGS = 8
#: The noise seeds are recorded after this many Sobol configurations (and chosen among them).
NOISE_AFTER = 64


def git_commit() -> tuple[str, bool]:
    """HEAD and whether ``model/`` or ``hpo/`` differ from it (the code that made the curves)."""
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "diff", "--quiet", "HEAD", "--", "model", "hpo"], cwd=REPO).returncode != 0
    return head or "unknown", dirty


def trial_config(space: SearchSpace, config: dict[str, Any], seed: int, root: Path, recover: bool = False):
    """The config a search trial of ``config`` would train, in observe mode, with ``seed``;
    ``recover``: with ``health.on_failure: recover`` and the trial's own ``stop_on`` instead."""
    cfg = _trial_config(space.trial_config(config), str(root), str(root / ".cache"), gpu=False)
    health = {"health.on_failure": "recover"} if recover else {"health.stop_on": []}
    return cfg.with_overrides({**health, "seed": seed})


def default_stop(verdict: Verdict) -> str | None:
    """The diagnosis the default ``stop_on`` would stop on at this verdict (in observe mode a
    warning may come first, the stopping ones then sit in ``evidence['also']``)."""
    for diagnosis in [verdict.diagnosis, *verdict.evidence.get("also", [])]:
        if diagnosis in DEFAULT_STOP_ON:
            return diagnosis
    return None


def train_run(
    space: SearchSpace, config_id: str, config: dict[str, Any], seed: int, root: Path, recover: bool = False
) -> list[dict[str, Any]]:
    """Train one (config, seed) to the space's budget (or a stop: ``recover`` only); one row per
    epoch report, replayed epochs included."""
    entered = time.perf_counter()
    cfg = trial_config(space, config, seed, root, recover)
    torch.set_num_threads(1)  # as a trial with resources.cpu 1
    trainer = Trainer(cfg, log=lambda _line: None)
    setup_s = time.perf_counter() - entered
    step_times: list[tuple[float, float]] = []
    # After each optimiser step, i.e. where the trainer's step check (and a stop) happens: wall
    # and process CPU seconds (CPU time is what a shared machine's load does not inflate).
    trainer.optimizer.register_step_post_hook(lambda *_: step_times.append((time.perf_counter(), time.process_time())))
    # The epoch's verdicts, read before a recovery rolls the monitor back with the rest of the state.
    seen = 0
    judged: dict[str, Any] = {}
    on_epoch_end = trainer.recovery.on_epoch_end

    def before_recovery(tr: Trainer, report: dict[str, Any]) -> None:
        judged.update(verdict=tr.monitor.verdict, raised=tr.monitor.history()[seen:])
        on_epoch_end(tr, report)

    trainer.recovery.on_epoch_end = before_recovery  # type: ignore[method-assign]
    rows: list[dict[str, Any]] = []
    ended = None
    while not trainer.finished:
        seen = len(trainer.monitor.history())
        first_step = trainer.global_step
        step_times.clear()
        start, cpu_start = time.perf_counter(), time.process_time()
        try:
            report = trainer.run_epoch()
        except Exception as exc:  # noqa: BLE001 - only after the monitor has said diverged
            said = [v.diagnosis for v in trainer.monitor.history()] + [e["diagnosis"] for e in trainer.recovery_events()]
            if "diverged" not in said:
                raise
            ended = f"epoch {trainer.epoch} raised {type(exc).__name__}: {exc}"[:300]
            break
        row = {k: v for k, v in report.items() if isinstance(v, (int, float, str))}
        row["report"] = len(rows) + 1
        row["time/epoch_cpu_s"] = time.process_time() - cpu_start
        verdict = judged["verdict"]
        row["health/verdict_step"] = verdict.step
        row["health/verdict_epoch"] = verdict.epoch
        raised = judged["raised"]
        row["health/verdicts"] = json.dumps(
            [{"diagnosis": v.diagnosis, "also": v.evidence.get("also", []), "signal": v.signal, "step": v.step} for v in raised]
        )
        row["time/train_s"] = step_times[-1][0] - start if step_times else math.nan
        row.update(
            {
                "health/default_stop": "",
                "health/default_stop_kind": "",
                "health/default_stop_step": None,
                "time/to_default_stop_s": None,
                "time/to_default_stop_cpu_s": None,
            }
        )
        for v in raised:
            stop = default_stop(v)
            if stop is None:
                continue
            if v.step is not None:  # a step check: the trainer breaks out of the epoch there
                index = min(max(v.step - first_step, 1), len(step_times)) - 1
                row.update(
                    {
                        "health/default_stop_kind": "step",
                        "health/default_stop_step": v.step,
                        "time/to_default_stop_s": step_times[index][0] - start,
                        "time/to_default_stop_cpu_s": step_times[index][1] - cpu_start,
                    }
                )
            else:  # an epoch check, after validation: the whole epoch is spent
                row.update(
                    {
                        "health/default_stop_kind": "epoch",
                        "health/default_stop_step": report["step"],
                        "time/to_default_stop_s": report["time/epoch_s"],
                        "time/to_default_stop_cpu_s": row["time/epoch_cpu_s"],
                    }
                )
            row["health/default_stop"] = stop
            break
        rows.append(row)
        print(
            f"[{config_id} s{seed}] epoch {row['epoch']}: loss {row['train/loss']:.4g} AP {row['val/ap']:.4f} "
            f"{row['time/epoch_s']:.1f}s -> {row['health/diagnosis']}{' STOP:' + row['health/default_stop'] if row['health/default_stop'] else ''}"
            + (f" RECOVERY: {row['health/recovery']}" if row.get("health/recovery") else "")
            + (" STOPPED" if row.get("health/stop") == 1 else ""),
            flush=True,
        )
    if ended is None and trainer.stopped:  # recover only: the recoveries were spent, or the diagnosis has none
        ended = f"stopped: {trainer.monitor.verdict.diagnosis} at epoch {trainer.epoch}"
    wall = time.perf_counter() - entered
    for row in rows:
        row.update(
            {
                "ended": ended,
                "epochs_run": len(rows),
                "iters_per_epoch": trainer.iters_per_epoch,
                "time/setup_s": setup_s,
                "time/run_s": wall,
            }
        )
    return rows


def part_path(parts: Path, config_id: str, seed: int) -> Path:
    return parts / f"{config_id}_s{seed}.parquet"


def write_part(path: Path, run: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    """One finished run, written atomically (a killed recording leaves no half part)."""
    table = pa.Table.from_pylist([{**run, **row} for row in rows])
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, path)


def read_parts(parts: Path) -> pa.Table | None:
    files = sorted(parts.glob("*.parquet"))
    if not files:
        return None
    return pa.concat_tables([pq.read_table(f) for f in files], promote_options="default")


def final_ap(parts: Path, config_ids: list[str], seed: int, max_epochs: int) -> dict[str, float]:
    """Last-epoch AP of each recorded (config, ``seed``) run (0 for a run that ended early)."""
    out = {}
    for cid in config_ids:
        path = part_path(parts, cid, seed)
        if path.is_file():
            t = pq.read_table(path, columns=["epoch", "val/ap"]).to_pylist()
            last = max(t, key=lambda r: r["epoch"])
            out[cid] = last["val/ap"] if last["epoch"] == max_epochs and math.isfinite(last["val/ap"]) else 0.0
    return out


def noise_configs(aps: dict[str, float], points: list[str], count: int = NOISE_CONFIGS) -> list[str]:
    """The configurations that get extra seeds: the given points, then configurations at evenly
    spaced ranks of the seed-0 final AP from the best down (the best always among them), so the
    noise is measured where a search's decisions are made, at the top, and across the range."""
    chosen = [p for p in points if p in aps][:count]
    ranked = [c for c in sorted(aps, key=lambda c: -aps[c]) if c not in chosen]
    slots = count - len(chosen)
    for i in range(slots):
        pick = ranked[round(i * (len(ranked) - 1) / max(slots - 1, 1))] if ranked else None
        if pick is not None and pick not in chosen:
            chosen.append(pick)
    return chosen


def noise_choice(parts: Path, space: SearchSpace, candidates: list[str], seed: int) -> list[str]:
    """:func:`noise_configs` of the recorded seed-``seed`` runs, chosen once and kept in
    ``parts/noise.json`` (a resumed or extended recording keeps the same choice)."""
    saved = parts / "noise.json"
    if saved.is_file():
        return json.loads(saved.read_text())
    aps = final_ap(parts, candidates, seed, space.budget.max_epochs)
    chosen = noise_configs(aps, [c for c in candidates if c.startswith("p")])
    saved.write_text(json.dumps(chosen))
    print(f"noise configurations: {chosen} (final AP {[round(aps[c], 4) for c in chosen]})", flush=True)
    return chosen


def consolidate(parts: Path = PARTS, out: Path = TABLE) -> pa.Table | None:
    """``table.parquet``: every part, sorted by config, seed and report (the epoch in a part
    without ``report``; zstd: stays small)."""
    table = read_parts(parts)
    if table is None:
        return None
    order = "report" if "report" in table.column_names and table["report"].null_count == 0 else "epoch"
    table = table.sort_by([("config_id", "ascending"), ("seed", "ascending"), (order, "ascending")])
    tmp = out.with_name(f".{out.name}.tmp")
    pq.write_table(table, tmp, compression="zstd")
    os.replace(tmp, out)
    print(
        f"{out}: {table.num_rows} rows, {len(set(zip(table['config_id'].to_pylist(), table['seed'].to_pylist())))} runs, "
        f"{out.stat().st_size / 1e3:.0f} kB"
    )
    return table


def stopping_configs(table: Path, seed: int) -> list[str]:
    """The configurations whose ``seed`` run in ``table`` has a default stopping verdict at some epoch."""
    rows = pq.read_table(table, columns=["config_id", "seed", "health/default_stop"]).to_pylist()
    return sorted({r["config_id"] for r in rows if r["seed"] == seed and r["health/default_stop"]})


def record(args: argparse.Namespace) -> None:
    space = load_space(args.space)
    configs = design(space, args.configs)
    root = data_root(space)
    parts = Path(args.parts)
    commit, dirty = git_commit()
    machine = machine_info(torch_threads_per_run=1)

    def run_one(cid: str, seed: int) -> None:
        path = part_path(parts, cid, seed)
        if path.is_file():
            return
        rows = train_run(space, cid, configs[cid], seed, root, args.recover)
        run = {
            "config_id": cid,
            "seed": seed,
            "source": "point" if cid.startswith("p") else "sobol",
            **configs[cid],
            "space": space.name,
            "git_commit": commit,
            "git_dirty": dirty,
            "machine": json.dumps(machine),
            "recorded_at": datetime.datetime.now().isoformat(timespec="seconds"),
            "load_average_at_end": json.dumps(load_average()),
        }
        write_part(path, run, rows)
        print(
            f"== {cid} seed {seed}: {len(rows)} epochs, {rows[-1]['time/run_s']:.0f} s"
            + (
                f", {rows[-1]['health/recoveries']:.0f} recoveries, {rows[-1]['ended'] or 'ran to the end'}"
                if args.recover
                else ""
            ),
            flush=True,
        )

    seed0 = space.fixed.get("seed", 0)
    if args.recover:  # the recovered runs: the failing configurations of the table, seed 0
        for cid in stopping_configs(Path(args.table), seed0):
            run_one(cid, seed0)
        consolidate(parts, Path(args.out))
        return
    if args.only:
        for cid in args.only.split(","):
            run_one(cid, seed0)
        return
    # The first NOISE_AFTER Sobol configurations (and the points), their noise seeds, then the rest:
    # a recording cut short still leaves a complete smaller table.
    first = [c for c in configs if c.startswith("p") or int(c[1:]) < NOISE_AFTER]
    for cid in first:
        run_one(cid, seed0)
    for seed in args.noise_seeds:
        for cid in noise_choice(parts, space, first, seed0):
            run_one(cid, seed)
    for cid in configs:
        run_one(cid, seed0)
    consolidate(parts, Path(args.out))


def time_one(args: argparse.Namespace) -> None:
    """One run of the space's first point (``--recover``: of the first failing configuration),
    timed, without touching the recorded parts."""
    space = load_space(args.space)
    configs = design(space, args.configs)
    cid = stopping_configs(Path(args.table), 0)[0] if args.recover else next(iter(configs))
    start = time.perf_counter()
    rows = train_run(space, cid, configs[cid], 0, data_root(space), args.recover)
    with tempfile.TemporaryDirectory() as scratch:
        write_part(Path(scratch) / "one.parquet", {"config_id": cid}, rows)
        size = (Path(scratch) / "one.parquet").stat().st_size
    print(f"one run: {time.perf_counter() - start:.1f} s ({len(rows)} epochs), part {size / 1e3:.0f} kB")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--space", default="cpu-mini")
    parser.add_argument("--configs", type=int, default=128, help="Sobol configurations (besides the space's points)")
    parser.add_argument("--noise-seeds", type=lambda s: [int(x) for x in s.split(",")], default=[1, 2])
    parser.add_argument("--only", help="comma-separated config ids: record these (seed 0) and stop")
    parser.add_argument(
        "--recover",
        action="store_true",
        help="the recovered runs: the table's failing configurations again with health.on_failure: recover",
    )
    parser.add_argument("--table", default=str(TABLE), help="--recover: the table whose failing configurations to record")
    parser.add_argument("--parts", help=f"default {PARTS} ({RECOVER_PARTS} with --recover)")
    parser.add_argument("--out", help=f"default {TABLE} ({TABLE_RECOVER} with --recover)")
    parser.add_argument("--time-one", action="store_true", help="time one run and exit")
    parser.add_argument("--consolidate", action="store_true", help="only write the table from the parts")
    args = parser.parse_args(argv)
    args.parts = args.parts or str(RECOVER_PARTS if args.recover else PARTS)
    args.out = args.out or str(TABLE_RECOVER if args.recover else TABLE)
    if args.time_one:
        time_one(args)
    elif args.consolidate:
        consolidate(Path(args.parts), Path(args.out))
    else:
        record(args)


if __name__ == "__main__":
    main()
