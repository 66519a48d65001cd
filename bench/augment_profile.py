"""Where the training loader's time goes: the cost of each augmentation step per image.

The GPU throughput runs (``throughput.py --device cuda``) showed the loader, not the GPU, bounds
training; this splits one sample's CPU time into reading it from the Arrow cache and each step of
the training transform (``model.data.transforms.build_train_transforms``), on the mini set, one
thread, the same images for every step.

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
from torchvision import tv_tensors

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script (bench/ is not an installed package)
    sys.path.insert(0, str(REPO))
from bench.machine import machine_info, write_results  # noqa: E402
from model.config import TrainConfig  # noqa: E402
from model.engine import build_datasets  # noqa: E402


def raw_sample(dataset: Any, index: int) -> tuple[tv_tensors.Image, dict[str, Any]]:
    """What the training transform receives: the cached image and its faces, untransformed."""
    loaded = dataset._cache.get(int(dataset._rows[index]))
    height, width = loaded.image.shape[-2:]
    boxes = tv_tensors.BoundingBoxes(loaded.boxes, format="XYXY", canvas_size=(height, width))
    return tv_tensors.Image(loaded.image), {"boxes": boxes, "labels": torch.ones(len(boxes), dtype=torch.int64),
                                            "ignore": loaded.invalid.clone()}  # fmt: skip


def profile(input_size: int, images: int, seed: int) -> dict[str, Any]:
    torch.set_num_threads(1)
    torch.manual_seed(seed)
    train, _ = build_datasets(TrainConfig().with_overrides({"model.input_size": input_size}))
    images = min(images, len(train))
    start = time.perf_counter()
    samples = [raw_sample(train, i) for i in range(images)]
    read_ms = (time.perf_counter() - start) / images * 1e3
    start = time.perf_counter()
    for i in range(images):
        train[i]
    whole_ms = (time.perf_counter() - start) / images * 1e3
    steps = train.transform.transforms
    seconds = [0.0] * len(steps)
    for sample in samples:
        for j, step in enumerate(steps):
            start = time.perf_counter()
            sample = step(*sample)
            seconds[j] += time.perf_counter() - start
    return {
        "machine": machine_info(),
        "input_size": input_size,
        "images": images,
        "read_from_cache_ms": round(read_ms, 3),
        "dataset_getitem_ms": round(whole_ms, 3),
        "steps_ms": {type(step).__name__: round(s / images * 1e3, 3) for step, s in zip(steps, seconds)},
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
        f"| read from the Arrow cache | {res['read_from_cache_ms']:.2f} | |",
    ]
    for name, ms in res["steps_ms"].items():
        lines.append(f"| {name} | {ms:.2f} | {100 * ms / total:.0f} % |")
    lines += [f"| **one sample (`dataset[i]`: read + transform)** | **{res['dataset_getitem_ms']:.2f}** | |"]
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
