"""Scaling: trials per hour of the same search on one Ray node and on two, and the overhead per trial.

A loopback cluster (``bench/loopback_cluster.py``: separate ``ray start`` process groups on this
machine, token authentication on, each node a fixed number of CPUs) runs ``python hpo/search.py
--address ...`` as a user would, MLflow in a SQLite store in a temporary directory. The search is
``cpu-mini`` cut to a few healthy trials (lr 1e-3..3e-2, no ASHA: every trial runs all its epochs,
so both runs do the same work), one CPU and one torch thread per trial:

* **1 node**: the head alone, ``--cpus-per-node`` CPUs;
* **2 nodes**: the head and a worker, ``--cpus-per-node`` CPUs each.

Per trial: the driver's wall time (its MLflow child run, opened when Tune starts the trial and
ended when Tune reports it complete), the trainer's own time (the sum of the reports'
``time/epoch_s``) and the rest, the orchestration overhead (Ray actor start, imports, model and
data set-up, checkpoint upload, sample drawing, Tune's bookkeeping, the MLflow callback), split into
the part inside the trainable (``time_total_s`` minus training) and outside it.

    python bench/scaling.py                        # 4 trials x 2 epochs, 1 CPU per node: ~9 min on the shared 2 cores
    python bench/scaling.py --trials 8 --epochs 3
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import mlflow
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench import loopback_cluster as loopback  # noqa: E402
from bench.machine import load_average, machine_info, machine_line, write_results  # noqa: E402
from bench.search_efficiency import ray_version, read_trials  # noqa: E402
from hpo.space import load_space  # noqa: E402
from hpo.trainable import NODE_ID_KEY  # noqa: E402


def space_file(directory: Path, name: str, trials: int, epochs: int) -> Path:
    """cpu-mini with healthy learning rates only and no scheduler: the same work in every run."""
    raw = load_space("cpu-mini").as_dict()
    raw.update(
        name=name,
        budget={"num_samples": trials, "max_epochs": epochs, "max_concurrent_trials": None, "time_budget_s": None},
        scheduler={"type": "none"},
        params={
            "optim.lr": {"distribution": "loguniform", "low": 1e-3, "high": 3e-2},
            "schedule.warmup_epochs": {"distribution": "uniform", "low": 0.0, "high": 1.0},
        },
    )
    raw.pop("points_to_evaluate", None)
    raw["sampler"]["n_startup_trials"] = trials  # random sampling: no trial waits on another's result
    path = directory / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def run(nodes: int, cpus: int, trials: int, epochs: int, data: Path, work: Path) -> dict[str, Any]:
    name = f"scale-{nodes}node"
    env = loopback.token_env(Path(tempfile.mkdtemp(prefix="auth-", dir=work)))
    cluster = loopback.start_head(env, cpus)
    workers = []
    try:
        for _ in range(nodes - 1):
            workers.append(loopback.add_worker(cluster, cpus))
        node_ids = [cluster.head.node_id] + [w.node_id for w in workers]
        driver_env = {k: v for k, v in env.items() if k != "RAY_AUTH_MODE"}  # connect() turns it on
        # Both nodes are this machine: the image cache beside the data, as a local search keeps it
        # (with --address the default is a node-local folder under ~).
        cmd = [sys.executable, str(REPO / "hpo" / "search.py"), "--address", cluster.address, "--no-report",
               "--space", str(space_file(work, name, trials, epochs)), "--data", str(data),
               "--storage-path", str(work / "ray"), "--tracking-uri", f"sqlite:///{work / (name + '.db')}",
               "--cache-dir", str(data / ".cache")]  # fmt: skip
        log = work / f"{name}.log"
        start = time.time()
        with log.open("w") as out:
            proc = subprocess.run(cmd, env=driver_env, cwd=work, stdout=out, stderr=subprocess.STDOUT, timeout=900)
        wall = time.time() - start
        if proc.returncode != 0:
            raise SystemExit(f"search on {nodes} node(s) exited {proc.returncode}; log {log}:\n{log.read_text()[-4000:]}")
    finally:
        for w in workers:
            w.stop()
        loopback.stop_head(cluster)

    return analyse(work, name, nodes, cpus, wall, node_ids, trials, epochs)


def trial_times(tracking_uri: str, experiment: str) -> dict[str, tuple[float, float]]:
    """``{trial_id: (start, end)}`` in seconds as the driver saw them: the MLflow callback opens a
    trial's child run when Tune starts the trial and ends it when Tune reports it complete."""
    client = mlflow.MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], filter_string="tags.`hpo.role` = 'trial'")
    return {r.data.tags["hpo.trial_id"]: (r.info.start_time / 1e3, r.info.end_time / 1e3) for r in runs}


def analyse(
    work: Path, name: str, nodes: int, cpus: int, wall: float, node_ids: list[str], trials: int, epochs: int
) -> dict[str, Any]:
    per_trial = []
    found = read_trials(work / "ray" / name)
    times = trial_times(f"sqlite:///{work / (name + '.db')}", name)
    for trial_id, t in found.items():
        rows = t["rows"]
        train = sum(r["time/epoch_s"] for r in rows)
        start, end = times[trial_id]
        inside = rows[-1]["time_total_s"]
        per_trial.append({"trial_id": trial_id, "epochs": len(rows), "node": node_ids.index(rows[-1][NODE_ID_KEY]),
                          "start": start, "end": end, "wall_s": end - start, "train_s": train, "trainable_s": inside,
                          "overhead_s": end - start - train, "overhead_inside_s": inside - train,
                          "overhead_outside_s": end - start - inside})  # fmt: skip
    if len(per_trial) != trials or any(t["epochs"] != epochs for t in per_trial):
        raise SystemExit(f"expected {trials} trials x {epochs} epochs, found {[(t['trial_id'], t['epochs']) for t in per_trial]}")
    first = min(t["start"] for t in per_trial)
    last = max(t["end"] for t in per_trial)
    med = {
        k: statistics.median(t[k] for t in per_trial)
        for k in ("wall_s", "train_s", "overhead_s", "overhead_inside_s", "overhead_outside_s")
    }
    return {
        "nodes": nodes,
        "cpus_per_node": cpus,
        "command_wall_s": wall,
        "trial_phase_s": last - first,
        "trials_per_hour": trials / wall * 3600,
        "trials_per_hour_trial_phase": trials / (last - first) * 3600,
        "trials_per_node": [sum(t["node"] == i for t in per_trial) for i in range(nodes)],
        "median": med,
        "overhead_share": med["overhead_s"] / med["wall_s"],
        # Every CPU busy from the first trial's start to the last one's end: the time a trial
        # holds a slot, start-up between trials (worker process, imports) included.
        "slot_s_per_trial": (last - first) * nodes * cpus / trials,
        "overhead_per_slot_s": (last - first) * nodes * cpus / trials - statistics.mean(t["train_s"] for t in per_trial),
        "trials": per_trial,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trials", type=int, default=4)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--cpus-per-node", type=int, default=1)
    p.add_argument("--data", type=Path, default=REPO / "data" / "wider-mini")
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    args = p.parse_args(argv)

    machine = machine_info(ray=ray_version())
    from model.data.mini import ensure_mini, generated_params  # the driver would make it; do it before timing

    ensure_mini(args.data.resolve(), **generated_params(args.data.resolve()))
    work = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    runs = []
    for nodes in (1, 2):
        print(f"{nodes} node(s) x {args.cpus_per_node} CPU: {args.trials} trials x {args.epochs} epochs ...", flush=True)
        res = run(nodes, args.cpus_per_node, args.trials, args.epochs, args.data.resolve(), work)
        runs.append(res)
        print(f"  {res['command_wall_s']:.0f} s, {res['trials_per_hour']:.0f} trials/h, trials per node {res['trials_per_node']}, "
              f"median overhead {res['median']['overhead_s']:.1f} s of {res['median']['wall_s']:.1f} s per trial", flush=True)  # fmt: skip
    machine["load_average_at_end"] = load_average()
    out = {"benchmark": "scaling: trials per hour on one and two Ray nodes (loopback), orchestration overhead per trial",
           "machine": machine,
           "settings": {"space": "cpu-mini, lr 1e-3..3e-2, warm-up 0..1 epoch, no scheduler", "trials": args.trials,
                        "epochs": args.epochs, "cpus_per_node": args.cpus_per_node, "cpus_per_trial": 1,
                        "torch_threads_per_trial": 1, "token_auth": True, "tracking": "MLflow, SQLite file"},
           "runs": runs, "speedup": runs[1]["trials_per_hour"] / runs[0]["trials_per_hour"]}  # fmt: skip
    write_results(args.out, "scaling", out, markdown(out))
    return 0


def markdown(out: dict[str, Any]) -> str:
    m, s = out["machine"], out["settings"]
    lines = [
        "# Scaling", "",
        machine_line(m),
        f"Search: {s['space']}; {s['trials']} trials x {s['epochs']} epochs, 1 CPU and 1 torch thread per trial, "
        f"{s['cpus_per_node']} CPU per node, loopback cluster with token auth, {s['tracking']}.", "",
        "| nodes | command wall s | trials/h (command) | trials/h (first trial start to last end) | trials per node "
        "| median trial wall s | median training s | median overhead s (inside trainable / outside) | overhead share "
        "| slot s per trial (incl. start-up between trials) | overhead per slot s (share) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    for r in out["runs"]:
        md = r["median"]
        lines.append(f"| {r['nodes']} x {r['cpus_per_node']} CPU | {r['command_wall_s']:.0f} | {r['trials_per_hour']:.0f} | "
                     f"{r['trials_per_hour_trial_phase']:.0f} | {r['trials_per_node']} | {md['wall_s']:.1f} | {md['train_s']:.1f} | "
                     f"{md['overhead_s']:.1f} ({md['overhead_inside_s']:.1f} / {md['overhead_outside_s']:.1f}) | {r['overhead_share']:.0%} | "
                     f"{r['slot_s_per_trial']:.1f} | {r['overhead_per_slot_s']:.1f} ({r['overhead_per_slot_s'] / r['slot_s_per_trial']:.0%}) |")  # fmt: skip
    lines += ["", f"Two nodes against one: {out['speedup']:.2f}x trials per hour (command wall clock)."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
