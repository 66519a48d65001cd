"""Prediction speed: ``model.predict`` over a WIDER-sized split, images/s per torch thread count.

What ``python -m model.predict`` does, timed: an untrained SSD of the chosen backbone and input
size (weights do not change the network's cost) predicts every image of a WIDER-layout split
(``bench/wider_like.py``'s generated images by default: 1024 px wide JPEGs, crowds of small
faces; the official val split has 3,226 images) through :func:`model.predict.predict_images` with
the config's defaults (validation path: decode, downscale to ``data.cache_max_side``, squash to
the square input; the config's ``postprocess``; ``batch_size`` 16, ``data.num_workers`` 0 unless
``--batch-size``/``--workers``), and writes the official prediction files with
:func:`model.widerface_eval.write_all_predictions`.

Timed per pass (``seconds``): exactly the region ``predict_split`` times and prints as its images/s:
``predict_images`` (decoding, resizing, forward, postprocess, mapping boxes back) plus writing the
``<event>/<name>.txt`` files. On the whole split the pass *is* ``predict_split`` (its own
``seconds``); with ``--images N`` below the split's size, the same two calls on the first N images.
Not timed: importing, building the model, listing the split, the warm-up, deleting the files.

One process, the thread counts interleaved: each round runs every ``--threads`` value
(``torch.set_num_threads``) over the images, the order reversed every other round, each pass after
a warm-up of ``--warmup`` images at that thread count, each into a fresh output folder.

Detections per image: an untrained head starts every anchor at ``model.prior_prob`` (0.01), below
the default ``postprocess.score_threshold`` (0.05), so an untrained model would detect nothing and
its NMS and files would cost ~nothing. ``--face-prior`` (default 0.5) starts the anchors above the
threshold instead: the top-k candidates (400) all enter NMS and up to ``postprocess.max_detections``
(200) survive per image (~140 on WIDER-like images at 256 px), near the most NMS and writing the
default postprocess allows (the per-image count is reported; ``--face-prior 0.01`` for an
untrained model as is).

Breakdown (``--breakdown-images``, default 200; 0 skips it): after the timed rounds, one
instrumented pass per thread count on the first images, loader workers 0 (so the dataset runs in
this process), split by wrapping the pieces ``predict_images`` calls: decode + resize (the split's
Dataset ``__getitem__``: JPEG decode, downscale, resize to the input, float), forward (the
network, ``FaceSSD.forward``; synchronised on CUDA), postprocess (``FaceSSD.predict`` minus its
forward: softmax, top-k, box decoding, NMS), other (the rest of ``predict_images``: collate, the
copy to the device, boxes back to the original frame, bookkeeping), write (the prediction files).
The wrappers add a few microseconds a call; the timed rounds carry none.

    python bench/predict_speed.py --data data/wider-like-val --generate      # CPU, 1 and 2 threads
    python bench/predict_speed.py --device cuda --threads 4 --workers 3 --backbone mobilenet_v3 --input-size 320
    python bench/predict_speed.py --data /tmp/wl --generate --generate-val 32 --images 32 --smoke

Writes ``bench/results/predict_speed.{json,md}`` (``predict_speed_cuda`` on CUDA; ``--stem``).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any
from unittest import mock

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script (bench/ is not an installed package)
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402
import torchvision  # noqa: E402

import model.predict as predict_module  # noqa: E402
from bench.machine import load_average, machine_info, publish  # noqa: E402
from bench.wider_like import make_wider_like  # noqa: E402
from model.config import TrainConfig  # noqa: E402
from model.data.mini import MARKER_NAME, generated_params  # noqa: E402
from model.engine import build_model, resolve_device  # noqa: E402
from model.predict import list_split_images, predict_images, predict_split  # noqa: E402
from model.ssd import FaceSSD  # noqa: E402
from model.widerface_eval import write_all_predictions  # noqa: E402

#: Not ``data/wider-like``: augment_pipeline.py, gpu_packing.py and gpu_search.py regenerate that
#: folder with their own image counts (``make_wider_like`` replaces a set with other parameters).
DEFAULT_DATA = REPO / "data" / "wider-like-val"
OFFICIAL_VAL_IMAGES = 3226
SMOKE_IMAGES = 24


# -- set-up -------------------------------------------------------------------------------------


def ensure_data(args: argparse.Namespace) -> str:
    """The data at ``--data``: used as it is when there is a split there; with ``--generate`` a
    WIDER-like set is made when the folder holds none. Returns how it was found."""
    root: Path = args.data
    if (root / f"WIDER_{args.split}" / "images").is_dir():
        params = generated_params(root)
        return f"generated WIDER-like set {params}" if params else "a WIDER layout (not generated here)"
    if not args.generate:
        raise SystemExit(f"no {args.split} images under {root} (WIDER_{args.split}/images); pass --generate to make them")
    if root.exists() and any(root.iterdir()) and not (root / MARKER_NAME).exists():
        raise SystemExit(f"{root} is a non-empty folder without a WIDER layout; pass another --data")
    start = time.perf_counter()
    print(f"generating {args.generate_val} val (+{args.generate_train} train) WIDER-like images at {root} ...", flush=True)
    make_wider_like(root, num_train=args.generate_train, num_val=args.generate_val, seed=0)
    print(f"  done in {time.perf_counter() - start:.0f} s", flush=True)
    return f"generated WIDER-like set {generated_params(root)} (made by this run)"


def bench_config(args: argparse.Namespace) -> TrainConfig:
    """The config a run of this backbone and size would save; everything else its defaults."""
    overrides: dict[str, Any] = {
        "model.pretrained_backbone": False,
        "model.prior_prob": args.face_prior,
        "device": args.device,
    }
    if args.backbone is not None:
        overrides["model.backbone"] = args.backbone
    if args.input_size is not None:
        overrides["model.input_size"] = args.input_size
    return TrainConfig().with_overrides(overrides)


def build(cfg: TrainConfig) -> FaceSSD:
    torch.manual_seed(0)
    return build_model(cfg).eval()


# -- passes -------------------------------------------------------------------------------------


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_pass(
    model: FaceSSD, cfg: TrainConfig, args: argparse.Namespace, relpaths: Sequence[str], whole_split: bool, out: Path
) -> dict[str, Any]:
    """One pass over ``relpaths``: ``predict_split`` on the whole split, else its two timed calls."""
    options = {"batch_size": args.batch_size, "num_workers": args.workers, "device": args.device_obj, "progress": False}
    if whole_split:
        summary = predict_split(model, cfg, args.data, args.split, out, **options)
        return {"seconds": summary.seconds, "images": summary.images, "detections": summary.detections,
                "unreadable": len(summary.unreadable)}  # fmt: skip
    start = time.perf_counter()
    preds = predict_images(model, cfg, args.data / f"WIDER_{args.split}" / "images", relpaths, **options)
    write_all_predictions(out, preds.image_ids, preds.detections)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "images": len(preds.image_ids),
            "detections": sum(len(d["scores"]) for d in preds.detections), "unreadable": len(preds.unreadable)}  # fmt: skip


def warm_up(model: FaceSSD, cfg: TrainConfig, args: argparse.Namespace, relpaths: Sequence[str]) -> None:
    if args.warmup > 0:
        predict_images(model, cfg, args.data / f"WIDER_{args.split}" / "images", relpaths[: args.warmup],
                       batch_size=args.batch_size, num_workers=args.workers, device=args.device_obj, progress=False)  # fmt: skip
        _sync(args.device_obj)


def _timing(totals: dict[str, float], key: str, fn: Callable[..., Any], device: torch.device | None = None) -> Callable[..., Any]:
    def wrapped(*a: Any, **kw: Any) -> Any:
        start = time.perf_counter()
        result = fn(*a, **kw)
        if device is not None:
            _sync(device)
        totals[key] += time.perf_counter() - start
        return result

    return wrapped


def breakdown_pass(
    model: FaceSSD, cfg: TrainConfig, args: argparse.Namespace, relpaths: Sequence[str], out: Path
) -> dict[str, Any]:
    """One instrumented pass (loader workers 0): milliseconds per image of each part."""
    totals = {"decode_resize": 0.0, "forward": 0.0, "predict": 0.0}
    dataset_cls = predict_module._SplitImages
    getitem = _timing(totals, "decode_resize", dataset_cls.__getitem__)
    # Instance attributes: nn.Module calls self.forward, predict_images calls net.predict.
    model.forward = _timing(totals, "forward", model.forward, args.device_obj)  # type: ignore[method-assign]
    model.predict = _timing(totals, "predict", model.predict)  # type: ignore[method-assign]
    try:
        with mock.patch.object(dataset_cls, "__getitem__", getitem):
            start = time.perf_counter()
            preds = predict_images(model, cfg, args.data / f"WIDER_{args.split}" / "images", relpaths,
                                   batch_size=args.batch_size, num_workers=0, device=args.device_obj, progress=False)  # fmt: skip
            predict_s = time.perf_counter() - start
    finally:
        del model.forward, model.predict
    start = time.perf_counter()
    write_all_predictions(out, preds.image_ids, preds.detections)
    write_s = time.perf_counter() - start
    n = len(relpaths)
    parts = {
        "decode_resize": totals["decode_resize"],
        "forward": totals["forward"],
        "postprocess": totals["predict"] - totals["forward"],
        "other": predict_s - totals["decode_resize"] - totals["predict"],
        "write": write_s,
    }
    total = predict_s + write_s
    return {
        "images": n,
        "ms_per_image": {k: round(v / n * 1e3, 3) for k, v in parts.items()},
        "share": {k: round(v / total, 3) for k, v in parts.items()},
        "images_per_s": round(n / total, 2),
    }


# -- the benchmark ------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> dict[str, Any]:
    data_origin = ensure_data(args)
    cfg = bench_config(args)
    args.device_obj = resolve_device(args.device)
    extra: dict[str, Any] = {"torchvision": torchvision.__version__, "device": str(args.device_obj)}
    if args.device_obj.type == "cuda":
        extra["gpu"] = torch.cuda.get_device_name(args.device_obj)
    machine = machine_info(**extra)  # the load average before the passes
    split_relpaths = list_split_images(args.data, args.split)
    n = len(split_relpaths) if args.images is None else args.images
    if n > len(split_relpaths):
        raise SystemExit(f"--images {n}: the {args.split} split at {args.data} has {len(split_relpaths)} images")
    relpaths = split_relpaths[:n]
    whole_split = n == len(split_relpaths)
    start = time.perf_counter()
    model = build(cfg)
    build_s = time.perf_counter() - start
    batch = args.batch_size or cfg.batch_size
    workers = cfg.data.num_workers if args.workers is None else args.workers
    print(f"{cfg.model.backbone} SSD at {cfg.model.input_size} px on {args.device_obj}, {n} of {len(split_relpaths)} "
          f"{args.split} images at {args.data}; batch {batch}, loader workers {workers}, threads {args.threads}", flush=True)  # fmt: skip

    scratch = Path(tempfile.mkdtemp(prefix="predict_speed-", dir=args.scratch))
    passes: dict[int, list[dict[str, Any]]] = {t: [] for t in args.threads}
    breakdown: dict[int, dict[str, Any]] = {}
    try:
        for r in range(args.rounds):
            for threads in args.threads if r % 2 == 0 else list(reversed(args.threads)):
                torch.set_num_threads(threads)
                warm_up(model, cfg, args, relpaths)
                out = scratch / f"r{r}-t{threads}"
                result = timed_pass(model, cfg, args, relpaths, whole_split, out)
                result["images_per_s"] = round(result["images"] / result["seconds"], 2)
                result["round"] = r
                passes[threads].append(result)
                shutil.rmtree(out, ignore_errors=True)
                print(f"round {r}, {threads} thread(s): {result['images']} images in {result['seconds']:.2f} s = "
                      f"{result['images_per_s']:.1f} images/s, {result['detections'] / max(result['images'], 1):.1f} "
                      f"detections per image", flush=True)  # fmt: skip
        k = min(args.breakdown_images, n)
        for threads in args.threads if k else []:
            torch.set_num_threads(threads)
            warm_up(model, cfg, args, relpaths)
            out = scratch / f"breakdown-t{threads}"
            breakdown[threads] = breakdown_pass(model, cfg, args, relpaths[:k], out)
            shutil.rmtree(out, ignore_errors=True)
            print(f"breakdown, {threads} thread(s), {k} images: {breakdown[threads]['ms_per_image']} ms per image", flush=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    summary = {}
    for threads, runs in passes.items():
        rates = [p["images_per_s"] for p in runs]
        summary[str(threads)] = {
            "images_per_s_median": round(statistics.median(rates), 2),
            "images_per_s": rates,
            "seconds": [round(p["seconds"], 3) for p in runs],
            "ms_per_image_median": round(1e3 / statistics.median(rates), 2),
            "detections_per_image": round(runs[0]["detections"] / max(runs[0]["images"], 1), 1),
            "unreadable": runs[0]["unreadable"],
        }
    machine["torch_threads"] = args.threads
    machine["load_average_at_end"] = load_average()
    return {
        "benchmark": "prediction speed: model.predict over a split (predict_images + the official prediction files)",
        "machine": machine,
        "settings": {
            "data": str(args.data),
            "data_origin": data_origin,
            "split": args.split,
            "images": n,
            "split_images": len(split_relpaths),
            "whole_split": whole_split,
            "timed_call": "model.predict.predict_split" if whole_split else "predict_images + write_all_predictions",
            "backbone": cfg.model.backbone,
            "input_size": cfg.model.input_size,
            "cache_max_side": cfg.data.cache_max_side,
            "batch_size": batch,
            "loader_workers": workers,
            "postprocess": cfg.postprocess.model_dump(),
            "face_prior": args.face_prior,
            "threads": args.threads,
            "rounds": args.rounds,
            "warmup_images": args.warmup,
            "breakdown_images": min(args.breakdown_images, n),
            "scratch": str(scratch.parent),
            "model_build_s": round(build_s, 3),
            "smoke": args.smoke,
        },
        "passes": {str(t): runs for t, runs in passes.items()},
        "summary": summary,
        "breakdown": {str(t): b for t, b in breakdown.items()},
    }


def to_markdown(r: dict[str, Any]) -> str:
    m, s = r["machine"], r["settings"]
    load = lambda key: ", ".join(map(str, m.get(key, [])))  # noqa: E731
    gpu = f", {m['gpu']}" if "gpu" in m else ""
    official = "" if s["images"] == OFFICIAL_VAL_IMAGES else f" (the official val split has {OFFICIAL_VAL_IMAGES:,})"
    lines = [
        "# Prediction speed: `model.predict` over a split (`bench/predict_speed.py`)",
        "",
        f"Machine: {m['cpu']}, {m['cpu_cores']} cores{gpu}; device {m['device']}; load average at start {load('load_average_at_start')}, "
        f"at end {load('load_average_at_end')}; Python {m['python']}, torch {m['torch']}, torchvision {m['torchvision']}.",
        f"Data: {s['images']:,} of the {s['split_images']:,} `{s['split']}` images{official} at `{s['data']}` ({s['data_origin']}).",
        f"Model: untrained {s['backbone']} SSD at {s['input_size']} px (face prior {s['face_prior']}), batch {s['batch_size']}, "
        f"loader workers {s['loader_workers']}, `cache_max_side` {s['cache_max_side']}, postprocess {s['postprocess']}.",
        f"Timed: `{s['timed_call']}` per pass: decoding, resizing, forward, postprocess, boxes to the original frame and "
        f"writing the official prediction files; not the model's construction ({s['model_build_s']} s), the listing, nor the "
        f"warm-up ({s['warmup_images']} images per pass). {s['rounds']} round(s), thread counts interleaved.",
        "",
        "| torch threads | images/s (median) | ms per image | images/s per round | seconds per round | detections per image |",
        "|---|---|---|---|---|---|",
    ]
    for t, v in r["summary"].items():
        lines.append(f"| {t} | **{v['images_per_s_median']:.1f}** | {v['ms_per_image_median']:.1f} | "
                     f"{', '.join(f'{x:.1f}' for x in v['images_per_s'])} | {', '.join(f'{x:.1f}' for x in v['seconds'])} | "
                     f"{v['detections_per_image']:.1f} |")  # fmt: skip
    if r["breakdown"]:
        parts = ("decode_resize", "forward", "postprocess", "other", "write")
        lines += [
            "",
            f"Breakdown, ms per image (share), one instrumented pass per thread count on {s['breakdown_images']} images, "
            "loader workers 0:",
            "",
            "| torch threads | decode + resize | forward | postprocess | other | write files | images/s |",
            "|---|---|---|---|---|---|---|",
        ]
        for t, b in r["breakdown"].items():
            cells = " | ".join(f"{b['ms_per_image'][p]:.2f} ({b['share'][p]:.0%})" for p in parts)
            lines.append(f"| {t} | {cells} | {b['images_per_s']:.1f} |")
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="WIDER-layout root (default: %(default)s)")
    p.add_argument("--split", default="val")
    p.add_argument("--generate", action="store_true", help="make a WIDER-like set at --data when it holds no split")
    p.add_argument("--generate-val", type=int, default=OFFICIAL_VAL_IMAGES, help="val images to generate (default: %(default)s)")
    p.add_argument("--generate-train", type=int, default=1, help="train images to generate (at least 1; default: %(default)s)")
    p.add_argument("--images", type=int, help=f"the split's first N images (default: all; --smoke: {SMOKE_IMAGES})")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="torch thread counts (default: 1 2)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--backbone", choices=("tiny", "mobilenet_v3", "vgg16"), help="default: the config's")
    p.add_argument("--input-size", type=int, help="default: the config's")
    p.add_argument("--batch-size", type=int, help="default: the config's")
    p.add_argument("--workers", type=int, help="DataLoader workers (default: the config's)")
    p.add_argument("--face-prior", type=float, default=0.5,
                   help="initial face probability of every anchor (0.01 = untrained as is: no detections)")  # fmt: skip
    p.add_argument("--rounds", type=int, help="timed passes per thread count (default 2; --smoke 1)")
    p.add_argument("--warmup", type=int, help="images predicted before each timed pass (default 32; --smoke 4)")
    p.add_argument("--breakdown-images", type=int, default=200, help="images of the instrumented pass (0: none)")
    p.add_argument("--scratch", type=Path, help="where the prediction files go while timed (default: the temp dir)")
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    p.add_argument("--stem", help="default: predict_speed (predict_speed_cuda on CUDA)")
    p.add_argument("--smoke", action="store_true", help=f"{SMOKE_IMAGES} images, 1 round; print only, write nothing")
    args = p.parse_args(argv)
    if args.smoke:
        args.images = SMOKE_IMAGES if args.images is None else args.images
    args.rounds = args.rounds if args.rounds is not None else (1 if args.smoke else 2)
    args.warmup = args.warmup if args.warmup is not None else (4 if args.smoke else 32)
    args.stem = args.stem or ("predict_speed_cuda" if args.device == "cuda" else "predict_speed")
    if args.images is not None and args.images < 1 or args.rounds < 1 or min(args.threads) < 1:
        p.error("--images, --rounds and --threads must be >= 1")
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: CUDA is not available here")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    results = run(args)
    publish(args, results, to_markdown(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
