"""The input pipeline on a CPU: per-sample vs batched augmentation, with and without the image cache.

On WIDER-like images (``bench/wider_like.py``: 1024 px wide JPEGs, crowds of small faces; the cache
keeps them at ``data.cache_max_side`` 640, as the trials do), one thread, no loader workers, so
every figure is images/s per CPU core:

* **the training loader alone**: what a loader worker delivers. ``per_sample``: decode (or read
  the cache), torchvision's zoom-out, IoU crop, flip, resize and colour distortion per image.
  ``batched``: the same read, the random draws and the boxes (``DrawSSDAugmentation``), the batch
  canvas; the pixels are left to the training device.
* **the batched render on this CPU** (``render_batch``, per image of a batch): what the batched
  pipeline costs when the training device *is* the CPU. With the loader's share it is the whole
  CPU cost per image of each pipeline, the basis of ``augment.pipeline: auto`` (batched on CUDA,
  per-sample on a CPU).

Rounds alternate the variants, so drifting load on a shared machine hits them alike.

    python bench/augment_pipeline.py                  # ~3 min on 2 cores
    python bench/augment_pipeline.py --input-size 160 --rounds 5

Writes ``bench/results/augment_pipeline.{json,md}``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script (bench/ is not an installed package)
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from bench.machine import machine_info, write_results  # noqa: E402
from bench.throughput import loader_rate, with_torchvision_photometric  # noqa: E402
from bench.wider_like import make_wider_like  # noqa: E402
from model.config import TrainConfig  # noqa: E402
from model.data.batch_augment import render_batch  # noqa: E402
from model.engine import build_datasets, build_loaders  # noqa: E402

VARIANTS = (("per_sample", True), ("batched", True), ("per_sample", False), ("batched", False))


def config(args: argparse.Namespace, pipeline: str, cache: bool) -> TrainConfig:
    return TrainConfig().with_overrides(
        {
            "data.source": "wider",
            "data.root": str(args.data.resolve()),
            "data.cache": cache,
            "data.max_val_images": 4,
            "augment.pipeline": pipeline,
            "model.input_size": args.input_size,
            "batch_size": args.batch_size,
            "device": "cpu",
        }
    )


def render_ms_per_image(args: argparse.Namespace, batches: int = 4) -> float:
    """``render_batch`` on this CPU, milliseconds per image (batches drawn once, rendered after)."""
    cfg = config(args, "batched", True)
    loader = build_loaders(cfg, *build_datasets(cfg))[0]
    drawn = [batch for _, batch in zip(range(batches), loader)]
    start = time.perf_counter()
    images = sum(len(render_batch(canvas, targets, args.input_size)) for canvas, targets in drawn)
    return (time.perf_counter() - start) / images * 1000


def run(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(1)
    make_wider_like(args.data, num_train=args.train_images, num_val=20, seed=0)
    loaders = {f"{p}{'' if c else '_nocache'}": build_loaders(config(args, p, c), *build_datasets(config(args, p, c)))[0]
               for p, c in VARIANTS}  # fmt: skip
    # The per-sample pipeline as it was before the closed-form hue step: torchvision's own distortion.
    cfg = config(args, "per_sample", True)
    train, val = build_datasets(cfg)
    train.transform = with_torchvision_photometric(train.transform)
    loaders["per_sample_torchvision"] = build_loaders(cfg, train, val)[0]
    rates: dict[str, list[float]] = {name: [] for name in loaders}
    renders: list[float] = []
    for r in range(args.rounds):
        names = list(loaders)[r % len(loaders) :] + list(loaders)[: r % len(loaders)]
        for name in names:
            rates[name].append(round(loader_rate(loaders[name], args.seconds), 1))
        renders.append(round(render_ms_per_image(args), 2))
        print(f"round {r + 1}: " + ", ".join(f"{n} {rates[n][-1]}" for n in loaders) + f"; render {renders[-1]} ms", flush=True)
    median = {name: statistics.median(values) for name, values in rates.items()}
    render = statistics.median(renders)
    whole = {"per_sample": 1000 / median["per_sample"], "batched": 1000 / median["batched"] + render}
    return {
        "benchmark": "input pipeline per CPU core: per-sample vs batched augmentation, with and without the image cache",
        "machine": machine_info(),
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "loader_images_per_s_per_core": rates,
        "median": median,
        "render_ms_per_image": renders,
        "cpu_ms_per_image_with_render": {k: round(v, 2) for k, v in whole.items()},
    }


def to_markdown(r: dict[str, Any]) -> str:
    m, s, med = r["machine"], r["settings"], r["median"]
    whole = r["cpu_ms_per_image_with_render"]
    return "\n".join(
        [
            "# The input pipeline per CPU core: per-sample vs batched augmentation",
            "",
            f"Machine: {m['cpu']}, {m['cpu_cores']} cores (shared; load average at start "
            f"{', '.join(map(str, m['load_average_at_start']))}), Python {m['python']}, torch {m['torch']}, one thread, "
            f"no loader workers. {s['train_images']} WIDER-like training images (bench/wider_like.py), network input "
            f"{s['input_size']} px, batch {s['batch_size']}; {s['rounds']} rounds of {s['seconds']} s per variant, alternating.",
            "",
            "| training loader alone, images/s per core (median; rounds) | with the image cache | decoding every JPEG |",
            "|---|---|---|",
            *(
                [
                    f"| per-sample with torchvision's own colour distortion (the hue step as before 2026-12-02) "
                    f"| {med['per_sample_torchvision']} ({', '.join(map(str, r['loader_images_per_s_per_core']['per_sample_torchvision']))}) | |"
                ]
                if "per_sample_torchvision" in med
                else []
            ),
            f"| per-sample (torchvision transforms per image{'; the fast hue step' if 'per_sample_torchvision' in med else ''}) "
            f"| {med['per_sample']} ({', '.join(map(str, r['loader_images_per_s_per_core']['per_sample']))}) "
            f"| {med['per_sample_nocache']} ({', '.join(map(str, r['loader_images_per_s_per_core']['per_sample_nocache']))}) |",
            f"| batched (draws and boxes; pixels on the device) | {med['batched']} ({', '.join(map(str, r['loader_images_per_s_per_core']['batched']))}) "
            f"| {med['batched_nocache']} ({', '.join(map(str, r['loader_images_per_s_per_core']['batched_nocache']))}) |",
            f"| batched / per-sample | **{med['batched'] / med['per_sample']:.2f}x** | {med['batched_nocache'] / med['per_sample_nocache']:.2f}x |",
            *(
                [
                    f"| batched / per-sample with torchvision's colour distortion | **{med['batched'] / med['per_sample_torchvision']:.2f}x** | |",
                    f"| per-sample: fast hue step / torchvision's | {med['per_sample'] / med['per_sample_torchvision']:.2f}x | |",
                ]
                if "per_sample_torchvision" in med
                else []
            ),
            f"| cache / no cache: per-sample, batched | {med['per_sample'] / med['per_sample_nocache']:.2f}x, "
            f"{med['batched'] / med['batched_nocache']:.2f}x | |",
            "",
            f"The batched render on this CPU: {statistics.median(r['render_ms_per_image'])} ms per image "
            f"(rounds: {', '.join(map(str, r['render_ms_per_image']))}). Whole CPU cost per image when the training "
            f"device is this CPU: per-sample {whole['per_sample']} ms, batched {whole['batched']} ms (loader + render).",
            "",
        ]
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=REPO / "data" / "wider-like", help="WIDER-like set, generated if missing")
    p.add_argument("--train-images", type=int, default=200)
    p.add_argument("--input-size", type=int, default=320)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seconds", type=float, default=6.0, help="seconds per variant per round")
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    p.add_argument("--stem", default="augment_pipeline")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    results = run(args)
    write_results(args.out, args.stem, results, to_markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
