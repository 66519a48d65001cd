"""Whole-process time of ``python -m model.widerface_eval`` on the official validation set: the
module as it was (importing torch) against the module now (NumPy and SciPy only).

Both run as a user runs them, one fresh Python process per run, on the same prediction files:
eval_speed.py's seeded predictions (jittered faces, double detections, ~40 false positives per
image) for the full official ground truth (3,226 images), written in the official layout with the
module's own writer. "Before" is ``model/widerface_eval.py`` at ``--before-rev`` (read with
``git show``, run as a script from a temporary folder, so it imports the working tree's
``model.metrics``, torch and all); "after" is the working tree's module, ``python -m``. The runs
alternate, the order flipping each round. Also timed, each in its own fresh process: a bare
interpreter (``python -c pass``), the import of each variant alone, and each variant's phases
in-process (import, ground truth, prediction files, AP), to show what the whole process is made of.
The script fails (exit 1) if the two variants' APs differ.

Usage::

    python bench/eval_process.py                 # 5 rounds, ~3 min on 2 cores
    python bench/eval_process.py --rounds 9

Writes ``bench/results/eval_process.{json,md}`` (``--out`` to change).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import scipy

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script (bench/ is not an installed package)
    sys.path.insert(0, str(REPO))
from bench.eval_speed import DEFAULT_GT, generate_predictions  # noqa: E402
from bench.machine import load_average, machine_info, write_results  # noqa: E402
from model.widerface_eval import SETTINGS, load_ground_truth, write_predictions  # noqa: E402

#: The last commit whose widerface_eval imported torch (through model.metrics and directly).
DEFAULT_BEFORE_REV = "4fe9f58"

# In-process phases of one variant, printed as JSON; argv: module source ("-" for the installed
# module), predictions, ground truth.
_PHASES = r"""
import json, sys, time
t0 = time.perf_counter()
if sys.argv[1] == "-":
    import model.widerface_eval as m
else:
    import importlib.util
    spec = importlib.util.spec_from_file_location("widerface_eval_before", sys.argv[1])
    m = sys.modules["widerface_eval_before"] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(m)
t1 = time.perf_counter()
gt = m.load_ground_truth(sys.argv[3])
t2 = time.perf_counter()
pred = m.read_predictions(sys.argv[2])
t3 = time.perf_counter()
aps = m.evaluate_widerface(pred, gt)
t4 = time.perf_counter()
print(json.dumps({"import": t1 - t0, "load_gt": t2 - t1, "read_predictions": t3 - t2, "evaluate": t4 - t3,
                  "torch_imported": "torch" in sys.modules, "modules": len(sys.modules), "aps": aps}))
"""


def _run(cmd: list[str]) -> tuple[float, float, str]:
    """Wall seconds, child CPU seconds and stdout of one fresh process; raises if it fails."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stderr}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), done.stdout


def _stats(values: list[float]) -> dict[str, Any]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "all": values}


def run(args: argparse.Namespace) -> dict[str, Any]:
    py = sys.executable
    machine = machine_info(numpy=np.__version__, scipy=scipy.__version__)
    gt = load_ground_truth(args.gt)
    predictions = generate_predictions(gt, args.seed, args.false_positives)
    with tempfile.TemporaryDirectory(prefix="eval_process-") as tmp:
        tmp_path = Path(tmp)
        pred_dir = tmp_path / "pred"
        for (event, name), rows in predictions.items():
            xyxy = np.c_[rows[:, :2], rows[:, :2] + rows[:, 2:4]]
            write_predictions(pred_dir, f"{event}/{name}", xyxy, rows[:, 4])
        before_src = tmp_path / "widerface_eval_before.py"
        show = ["git", "show", f"{args.before_rev}:model/widerface_eval.py"]  # reads the object; no checkout
        source = subprocess.run(show, cwd=REPO, capture_output=True, text=True, check=True).stdout
        before_src.write_text(source)
        cli = {
            "before": [py, str(before_src), "--pred", str(pred_dir), "--gt", str(args.gt)],
            "after": [py, "-m", "model.widerface_eval", "--pred", str(pred_dir), "--gt", str(args.gt)],
        }
        imports = {
            "before": [py, "-c", _PHASES.split("t1 =")[0], str(before_src), str(pred_dir), str(args.gt)],
            "after": [py, "-c", "import model.widerface_eval"],
        }
        phases_cmd = {
            "before": [py, "-c", _PHASES, str(before_src), str(pred_dir), str(args.gt)],
            "after": [py, "-c", _PHASES, "-", str(pred_dir), str(args.gt)],
        }
        total = sum(len(v) for v in predictions.values())
        print(f"{len(gt)} images, {gt.num_faces} faces, {total} predictions in {pred_dir}", flush=True)
        for variant in cli:  # one untimed run each: the files (predictions, torch's libraries) in the page cache
            _run(cli[variant])
        wall: dict[str, dict[str, list[float]]] = {k: {"cli": [], "import": []} for k in cli}
        cpu: dict[str, list[float]] = {k: [] for k in cli}
        bare: list[float] = []
        aps: dict[str, Any] = {}
        phases: dict[str, list[dict[str, Any]]] = {k: [] for k in cli}
        for r in range(args.rounds):
            order = ["before", "after"] if r % 2 == 0 else ["after", "before"]
            bare.append(_run([py, "-c", "pass"])[0])
            for variant in order:
                json_out = tmp_path / f"{variant}.json"
                seconds, cpu_s, out = _run([*cli[variant], "--json", str(json_out)])
                wall[variant]["cli"].append(seconds)
                cpu[variant].append(cpu_s)
                aps[variant] = json.loads(json_out.read_text())
                wall[variant]["import"].append(_run(imports[variant])[0])
            for variant in order:
                phases[variant].append(json.loads(_run(phases_cmd[variant])[2]))
            print(
                f"round {r + 1}: before {wall['before']['cli'][-1]:.2f} s, after {wall['after']['cli'][-1]:.2f} s",
                flush=True,
            )
    machine["load_average_at_end"] = load_average()
    diff = max(abs(aps["before"][s] - aps["after"][s]) for s in SETTINGS)
    phase_names = ("import", "load_gt", "read_predictions", "evaluate")
    results: dict[str, Any] = {
        "benchmark": "python -m model.widerface_eval, whole process: before (imports torch) vs after (NumPy only)",
        "machine": machine,
        "settings": {
            "gt": str(args.gt),
            "images": len(gt),
            "faces": gt.num_faces,
            "predictions": total,
            "seed": args.seed,
            "false_positives_per_image": args.false_positives,
            "rounds": args.rounds,
            "before": f"model/widerface_eval.py at {args.before_rev}, run as a script",
            "after": "model/widerface_eval.py of the working tree, python -m",
        },
        "ap": aps,
        "max_abs_ap_difference": diff,
        "same_ap": diff == 0.0,
        "bare_interpreter_seconds": _stats(bare),
        "cli_seconds": {k: _stats(v["cli"]) for k, v in wall.items()},
        "cli_cpu_seconds": {k: _stats(v) for k, v in cpu.items()},
        "import_only_seconds": {k: _stats(v["import"]) for k, v in wall.items()},
        "phases_seconds_median": {k: {p: statistics.median(ph[p] for ph in v) for p in phase_names} for k, v in phases.items()},
        "torch_imported": {k: v[0]["torch_imported"] for k, v in phases.items()},
        "modules_loaded": {k: v[0]["modules"] for k, v in phases.items()},
    }
    b, a = results["cli_seconds"]["before"]["median"], results["cli_seconds"]["after"]["median"]
    results["speedup"] = round(b / a, 2)
    cb, ca = results["cli_cpu_seconds"]["before"]["median"], results["cli_cpu_seconds"]["after"]["median"]
    results["cpu_speedup"] = round(cb / ca, 2)
    results["evaluation_share_of_process"] = {
        k: round((ph["load_gt"] + ph["read_predictions"] + ph["evaluate"]) / results["cli_seconds"][k]["median"], 3)
        for k, ph in results["phases_seconds_median"].items()
    }
    return results


def to_markdown(res: dict[str, Any]) -> str:
    m, s = res["machine"], res["settings"]
    cli, imp, ph, share = (
        res["cli_seconds"],
        res["import_only_seconds"],
        res["phases_seconds_median"],
        res["evaluation_share_of_process"],
    )

    def span(x: dict[str, Any]) -> str:
        return f"{x['median']:.2f} ({x['min']:.2f}-{x['max']:.2f})"

    lines = [
        "# `python -m model.widerface_eval`, whole process: before (imports torch) vs after (NumPy only)",
        "",
        f"Machine: {m['cpu']}, {m['cpu_cores']} cores (shared), load average at start "
        f"{', '.join(str(x) for x in m.get('load_average_at_start', []))}, at end "
        f"{', '.join(str(x) for x in m.get('load_average_at_end', []))}; Python {m['python']}, torch {m['torch']}, "
        f"NumPy {m['numpy']}, SciPy {m['scipy']}.",
        f"Data: the official validation ground truth ({s['images']:,} images, {s['faces']:,} faces), "
        f"{s['predictions']:,} generated predictions (seed {s['seed']}) in {s['images']:,} prediction files; "
        f"{s['rounds']} rounds, before and after alternating. Before: {s['before']}; after: {s['after']}.",
        "",
        "| | whole process, s (median, range) | process CPU, s | import alone, s | in-process: import / ground truth / "
        "prediction files / AP, s | evaluation's share of the process | torch loaded | modules |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for k in ("before", "after"):
        p = ph[k]
        lines.append(
            f"| {k} | {span(cli[k])} | {res['cli_cpu_seconds'][k]['median']:.2f} | {span(imp[k])} | "
            f"{p['import']:.2f} / {p['load_gt']:.2f} / {p['read_predictions']:.2f} / {p['evaluate']:.2f} | "
            f"{share[k] * 100:.0f} % | {'yes' if res['torch_imported'][k] else 'no'} | {res['modules_loaded'][k]} |"
        )
    lines += [
        "",
        f"- Whole process: **{res['speedup']:.2f}x** faster after ({cli['before']['median']:.2f} s -> "
        f"{cli['after']['median']:.2f} s), **{res['cpu_speedup']:.2f}x** in process CPU time "
        f"({res['cli_cpu_seconds']['before']['median']:.2f} s -> {res['cli_cpu_seconds']['after']['median']:.2f} s: "
        "the steadier reading on a shared machine); a bare interpreter starts in "
        f"{res['bare_interpreter_seconds']['median']:.2f} s.",
        f"- APs of the two variants: {'identical' if res['same_ap'] else 'DIFFERENT'} "
        f"(easy {res['ap']['after']['easy']:.6f}, medium {res['ap']['after']['medium']:.6f}, "
        f"hard {res['ap']['after']['hard']:.6f}).",
        "- Evaluation = reading the `.mat` ground truth + reading the prediction files + the AP computation, "
        "timed inside a separate process of each variant; its share is of the median whole-process time.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gt", type=Path, default=DEFAULT_GT, help="directory with the official .mat ground truth")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--false-positives", type=float, default=40.0, help="mean false positives per image")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--before-rev", default=DEFAULT_BEFORE_REV, help="git revision of the 'before' module")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    args = parser.parse_args(argv)
    if not (args.gt / "wider_face_val.mat").is_file():
        parser.error(f"no official WIDER FACE validation ground truth at {args.gt} (--gt)")
    if args.rounds < 1:
        parser.error("--rounds must be >= 1")
    res = run(args)
    write_results(args.out, "eval_process", res, to_markdown(res))
    return 0 if res["same_ap"] else 1


if __name__ == "__main__":
    sys.exit(main())
