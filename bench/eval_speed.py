"""Evaluation speed: our vectorised WIDER FACE protocol against the plain reference loop.

Both evaluate the same generated predictions on the full official validation ground truth
(3,226 images, 39,708 faces): :func:`model.widerface_eval.evaluate_widerface` against
:func:`bench.widerface_reference.evaluation` (per image, per prediction, per threshold, as
``WiderFace-Evaluation/evaluation.py``; its compiled IoU kernel stood in for by NumPy). The
script checks that easy, medium and hard AP agree to 1e-6 and reports the speed ratio.

Predictions (seeded) look like a detector's: most faces found once with a jittered box, some
twice, false positives of all sizes, scores higher for hits than for false positives, so the AP
is neither 0 nor 1 and every part of the protocol (ignored faces, duplicates, thresholds) is hit.

Timed: the evaluation call only. Not timed: reading the ground truth (each its own loader),
generating the predictions, and the reference's input preparation (its nested, score-sorted
dict: the reference expects sorted prediction files; ours sorts inside the timed call).

Usage::

    python bench/eval_speed.py                     # ~1-2 min on 2 cores
    python bench/eval_speed.py --repeats 5 --python-overlaps

Writes ``bench/results/eval_speed.json`` and ``.md`` (``--out`` to change); exits 1 if the APs
differ by more than the tolerance.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import scipy
import torch

from model.widerface_eval import SETTINGS, WiderGroundTruth, evaluate_widerface, load_ground_truth

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script (bench/ is not an installed package)
    sys.path.insert(0, str(REPO))
from bench import widerface_reference as reference  # noqa: E402
from bench.machine import machine_info  # noqa: E402

DEFAULT_GT = REPO.parent / "shared" / "data" / "widerface_val_gt"
DEFAULT_OUT = REPO / "bench" / "results"
TOLERANCE = 1e-6


def generate_predictions(gt: WiderGroundTruth, seed: int, false_positives: float) -> dict[tuple[str, str], np.ndarray]:
    """``{(event, name): (N, 5) x y w h score}``: jittered faces (80 % found, 10 % of those twice)
    and a Poisson number of false positives per image, scores from Beta distributions."""
    rng = np.random.default_rng(seed)
    predictions = {}
    for im in gt.images:
        boxes = im.boxes
        found = boxes[rng.random(len(boxes)) < 0.8]
        found = np.r_[found, found[rng.random(len(found)) < 0.1]]  # double detections
        size = np.tile(np.abs(found[:, 2:]) + 1, 2)
        hits = found + rng.normal(0, 0.12, found.shape) * size
        extent = np.abs(boxes[:, :2] + boxes[:, 2:]).max(axis=0) if len(boxes) else np.array([1024.0, 768.0])
        n_fp = rng.poisson(false_positives)
        wh = rng.uniform(4, 120, (n_fp, 2))
        fps = np.c_[rng.uniform(0, 1, (n_fp, 2)) * np.maximum(extent, 64), wh]
        scores = np.r_[rng.beta(5, 2, len(hits)), rng.beta(2, 5, n_fp)]
        predictions[(im.event, im.name)] = np.c_[np.r_[hits, fps], scores]
    return predictions


def _time(fn: Any, repeats: int) -> tuple[Any, list[float]]:
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return result, times


def run(args: argparse.Namespace) -> dict[str, Any]:
    # NumPy's BLAS is not used here, but keep torch (imported by the model package) at one thread.
    torch.set_num_threads(1)
    gt = load_ground_truth(args.gt)
    ref_gt = reference.load_gt(args.gt)
    predictions = generate_predictions(gt, args.seed, args.false_positives)
    nested = reference.nest_sorted(predictions, [(im.event, im.name) for im in gt.images])
    total = sum(len(v) for v in predictions.values())
    print(f"{len(gt)} images, {gt.num_faces} faces, {total} predictions", flush=True)

    ours, ours_times = _time(lambda: evaluate_widerface(predictions, gt), args.repeats)
    print(f"ours: {statistics.median(ours_times):.3f} s  {ours}", flush=True)
    ref_aps, ref_times = _time(lambda: reference.evaluation(nested, ref_gt), args.reference_repeats)
    ref = dict(zip(SETTINGS, ref_aps, strict=True))
    print(f"reference: {statistics.median(ref_times):.3f} s  {ref}", flush=True)
    diff = max(abs(ours[s] - ref[s]) for s in SETTINGS)
    results: dict[str, Any] = {
        "benchmark": "WIDER FACE evaluation: model.widerface_eval vs the plain reference loop",
        "machine": machine_info(numpy=np.__version__, scipy=scipy.__version__),
        "settings": {
            "gt": str(args.gt),
            "images": len(gt),
            "faces": gt.num_faces,
            "predictions": total,
            "seed": args.seed,
            "false_positives_per_image": args.false_positives,
            "repeats_ours": args.repeats,
            "repeats_reference": args.reference_repeats,
            "reference_overlaps": "NumPy bbox_overlaps (stands in for the reference's Cython kernel)",
        },
        "ap": {"ours": ours, "reference": ref},
        "max_abs_ap_difference": diff,
        "tolerance": TOLERANCE,
        "same_ap": diff <= TOLERANCE,
        "seconds": {"ours": ours_times, "reference": ref_times},
        "median_seconds": {"ours": statistics.median(ours_times), "reference": statistics.median(ref_times)},
    }
    results["speedup"] = round(results["median_seconds"]["reference"] / results["median_seconds"]["ours"], 2)
    if args.python_overlaps:
        slow_aps, slow_times = _time(lambda: reference.evaluation(nested, ref_gt, overlaps_fn=reference.bbox_overlaps_loop), 1)
        slow = dict(zip(SETTINGS, slow_aps, strict=True))
        print(f"reference, Python IoU loops: {slow_times[0]:.3f} s  {slow}", flush=True)
        results["reference_python_overlaps"] = {
            "ap": slow,
            "seconds": slow_times[0],
            "speedup": round(slow_times[0] / results["median_seconds"]["ours"], 2),
            "max_abs_ap_difference": max(abs(ours[s] - slow[s]) for s in SETTINGS),
        }
    return results


def to_markdown(res: dict[str, Any]) -> str:
    m, s, t = res["machine"], res["settings"], res["median_seconds"]
    ours, ref = res["ap"]["ours"], res["ap"]["reference"]
    lines = [
        "# WIDER FACE evaluation speed: vectorised protocol vs the plain reference loop",
        "",
        f"Machine: {m['cpu']}, {m['cpu_cores']} cores, Python {m['python']}, NumPy {m['numpy']}, "
        f"load average at start {', '.join(str(x) for x in m.get('load_average_at_start', []))}.",
        f"Data: the official validation ground truth ({s['images']:,} images, {s['faces']:,} faces), "
        f"{s['predictions']:,} generated predictions (seed {s['seed']}, {s['false_positives_per_image']:g} false "
        "positives per image on average).",
        "",
        "| | easy AP | medium AP | hard AP | seconds (median) |",
        "|---|---|---|---|---|",
        f"| ours (`model.widerface_eval`) | {ours['easy']:.8f} | {ours['medium']:.8f} | {ours['hard']:.8f} | "
        f"{t['ours']:.3f} (of {s['repeats_ours']}) |",
        f"| reference loop (`bench/widerface_reference.py`) | {ref['easy']:.8f} | {ref['medium']:.8f} | "
        f"{ref['hard']:.8f} | {t['reference']:.2f} (of {s['repeats_reference']}) |",
    ]
    slow = res.get("reference_python_overlaps")
    if slow:
        lines.append(
            f"| reference loop, IoU kernel in Python loops | {slow['ap']['easy']:.8f} | {slow['ap']['medium']:.8f} | "
            f"{slow['ap']['hard']:.8f} | {slow['seconds']:.2f} (of 1) |"
        )
    lines += [
        "",
        f"- Largest AP difference: {res['max_abs_ap_difference']:.2e} (tolerance {res['tolerance']:g}): "
        f"{'same AP' if res['same_ap'] else 'APs DIFFER'}.",
        f"- Speed-up: **{res['speedup']:.1f}x** against the reference with a NumPy IoU kernel (target >= 20x)"
        + (f"; {slow['speedup']:.0f}x against Python IoU loops." if slow else "."),
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gt", type=Path, default=DEFAULT_GT, help="directory with the official .mat ground truth")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--false-positives", type=float, default=40.0, help="mean false positives per image")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs of ours (median reported)")
    parser.add_argument("--reference-repeats", type=int, default=1, help="timed runs of the reference")
    parser.add_argument(
        "--python-overlaps", action="store_true", help="also time the reference with its IoU kernel in Python loops"
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where eval_speed.json/.md go")
    args = parser.parse_args(argv)
    if not (args.gt / "wider_face_val.mat").is_file():
        parser.error(f"no official WIDER FACE validation ground truth at {args.gt} (--gt)")
    if args.repeats < 1 or args.reference_repeats < 1:
        parser.error("--repeats and --reference-repeats must be >= 1")
    res = run(args)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "eval_speed.json").write_text(json.dumps(res, indent=2) + "\n")
    md = to_markdown(res)
    (args.out / "eval_speed.md").write_text(md)
    print(md)
    return 0 if res["same_ap"] else 1


if __name__ == "__main__":
    sys.exit(main())
