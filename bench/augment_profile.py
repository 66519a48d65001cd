"""Where the training loader's time goes: the cost of each augmentation step per image.

The GPU throughput runs (``throughput.py --device cuda``) showed the loader, not the GPU, bounds
training; this splits one sample's CPU time into reading it from the Arrow cache and each step of
the training transform (``model.data.transforms.build_train_transforms``), on the mini set, one
thread, the same images for every step. The photometric distortion (ours: torchvision's with a
fast hue step, ``model/data/colour.py``) is timed side by side with torchvision's own
``RandomPhotometricDistort`` on the same inputs with the same random draws.

Usage::

    python bench/augment_profile.py                    # 320 px (the widerface-gpu space), 150 images
    python bench/augment_profile.py --input-size 256 --images 300

Writes ``bench/results/augment_profile.{json,md}``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torchvision.transforms import v2

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script (bench/ is not an installed package)
    sys.path.insert(0, str(REPO))
from bench.machine import machine_info, write_results  # noqa: E402
from model.config import TrainConfig  # noqa: E402
from model.data.colour import PhotometricDistort  # noqa: E402
from model.engine import build_datasets  # noqa: E402


def timed(steps: list[Any], seconds: list[float], references: dict[int, Any], reference_seconds: dict[int, float]) -> Any:
    """The training transform, step by step, adding each step's time to ``seconds``; before step
    ``j`` in ``references``, that reference transform runs on the same input with the same random
    state (then restored, so the pipeline goes on as without it), timed into ``reference_seconds``."""

    def transform(image: Any, target: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
        sample = (image, target)
        for j, step in enumerate(steps):
            if j in references:
                state = torch.get_rng_state()
                start = time.perf_counter()
                references[j](*sample)
                reference_seconds[j] += time.perf_counter() - start
                torch.set_rng_state(state)
            start = time.perf_counter()
            sample = step(*sample)
            seconds[j] += time.perf_counter() - start
        return sample

    return transform


def profile(input_size: int, images: int, seed: int) -> dict[str, Any]:
    torch.set_num_threads(1)
    torch.manual_seed(seed)
    train, _ = build_datasets(TrainConfig().with_overrides({"model.input_size": input_size}))
    images = min(images, len(train))
    steps = list(train.transform.transforms)
    seconds = [0.0] * len(steps)
    references = {j: v2.RandomPhotometricDistort(p=0.5) for j, step in enumerate(steps) if isinstance(step, PhotometricDistort)}
    reference_seconds = dict.fromkeys(references, 0.0)
    train.transform = timed(steps, seconds, references, reference_seconds)
    start = time.perf_counter()
    for i in range(images):
        train[i]
    whole_ms = (time.perf_counter() - start - sum(reference_seconds.values())) / images * 1e3
    steps_ms = [s / images * 1e3 for s in seconds]
    return {
        "machine": machine_info(),
        "input_size": input_size,
        "images": images,
        "dataset_getitem_ms": round(whole_ms, 3),
        # Reading from the Arrow cache, wrapping and the dataset's own bookkeeping: the rest.
        "outside_transform_ms": round(whole_ms - sum(steps_ms), 3),
        "steps_ms": {type(step).__name__: round(ms, 3) for step, ms in zip(steps, steps_ms)},
        "reference_ms": {
            f"torchvision's RandomPhotometricDistort (instead of {type(steps[j]).__name__})": round(s / images * 1e3, 3)
            for j, s in reference_seconds.items()
        },
    }


def to_markdown(res: dict[str, Any]) -> str:
    m = res["machine"]
    total = sum(res["steps_ms"].values())
    lines = [
        "# Training loader: CPU time per image, by augmentation step",
        "",
        f"Machine: {m['cpu']}, 1 torch thread, torch {m['torch']}. Mini set, {res['input_size']} px, {res['images']} images.",
        "",
        "| step | ms per image | share of the transform |",
        "|---|---|---|",
        f"| read from the Arrow cache and the dataset's own work | {res['outside_transform_ms']:.2f} | |",
    ]
    for name, ms in res["steps_ms"].items():
        lines.append(f"| {name} | {ms:.2f} | {100 * ms / total:.0f} % |")
    lines += [f"| **one sample (`dataset[i]`: read + transform)** | **{res['dataset_getitem_ms']:.2f}** | |"]
    for name, ms in res.get("reference_ms", {}).items():
        lines.append(f"| reference, same inputs and draws: {name} | {ms:.2f} | |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input-size", type=int, default=320)
    parser.add_argument("--images", type=int, default=150)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    args = parser.parse_args(argv)
    res = profile(args.input_size, args.images, args.seed)
    write_results(args.out, "augment_profile", res, to_markdown(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
