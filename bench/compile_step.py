"""Does torch.compile pay for the training step? Eager vs compiled model, the same step otherwise.

The widerface-gpu trial's step (MobileNetV3 SSD at 320 px, batch 32, AMP, channels-last; SGD, the
project's loss with hard-negative mining), on one fixed synthetic batch already on the device, so
only the step is timed. Variants: eager; ``torch.compile(model)`` (Inductor, default mode); the
same with ``mode="max-autotune-no-cudagraphs"``. The loss stays eager in every variant: its anchor
matching has a data-dependent number of faces. Each variant: compile/warm-up steps, then the
median of ``--steps`` steps timed with CUDA events; compile time reported separately. Variants
run in one process, interleaved over ``--rounds`` so clock drift hits them alike.

    python bench/compile_step.py                    # on a GPU: ~2 min, most of it compiling
    python bench/compile_step.py --device cpu --backbone tiny --input-size 128 --batch-size 8 --steps 3 --rounds 1 --smoke

Writes ``bench/results/compile_step.{json,md}``.
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

from bench.machine import machine_info, publish  # noqa: E402
from model.config import TrainConfig  # noqa: E402
from model.engine import build_loss, build_model, build_optimizer  # noqa: E402
from model.loss import weighted_loss  # noqa: E402

VARIANTS = {"eager": None, "compile": "default", "compile-max-autotune": "max-autotune-no-cudagraphs"}


def synthetic_batch(
    cfg: TrainConfig, device: torch.device, gen: torch.Generator
) -> tuple[torch.Tensor, list[dict[str, torch.Tensor]]]:
    size, n = cfg.model.input_size, cfg.batch_size
    images = torch.rand(n, 3, size, size, generator=gen).to(device).contiguous(memory_format=torch.channels_last)
    targets = []
    for _ in range(n):
        k = int(torch.randint(1, 12, (1,), generator=gen))
        xy = torch.rand(k, 2, generator=gen) * (size - 40)
        wh = 8 + torch.rand(k, 2, generator=gen) * 30
        targets.append(
            {"boxes": torch.cat([xy, xy + wh], 1).to(device), "labels": torch.ones(k, dtype=torch.int64, device=device)}
        )
    return images, targets


class Step:
    def __init__(self, cfg: TrainConfig, device: torch.device, mode: str | None) -> None:
        torch.manual_seed(0)
        self.model = build_model(cfg).to(device).to(memory_format=torch.channels_last).train()
        self.loss_fn = build_loss(cfg, self.model)
        self.optimizer = build_optimizer(cfg, self.model)
        self.forward = self.model if mode is None else torch.compile(self.model, mode=mode)
        self.anchors = self.model.anchors(device, torch.float32)
        self.autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")

    def __call__(self, images: torch.Tensor, targets: list[dict[str, torch.Tensor]]) -> None:
        with self.autocast:
            outputs = self.forward(images)
        loss = weighted_loss(self.loss_fn(outputs, self.anchors, targets), 1.0, 1.0)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(step: Step, batch: tuple[Any, Any], n: int, device: torch.device) -> list[float]:
    times = []
    for _ in range(n):
        _sync(device)
        t0 = time.perf_counter()
        step(*batch)
        _sync(device)
        times.append(time.perf_counter() - t0)
    return times


def run(args: argparse.Namespace) -> dict[str, Any]:
    device = torch.device(args.device)
    cfg = TrainConfig().with_overrides(
        {
            "model.backbone": args.backbone,
            "model.input_size": args.input_size,
            "batch_size": args.batch_size,
            "device": args.device,
        }
    )
    batch = synthetic_batch(cfg, device, torch.Generator().manual_seed(0))
    steps, compile_s = {}, {}
    for name, mode in VARIANTS.items():
        steps[name] = Step(cfg, device, mode)
        t0 = time.perf_counter()
        time_steps(steps[name], batch, 3, device)  # compiles (or warms up) here
        compile_s[name] = round(time.perf_counter() - t0, 1)
    times: dict[str, list[float]] = {name: [] for name in VARIANTS}
    for _ in range(args.rounds):
        for name in VARIANTS:
            times[name] += time_steps(steps[name], batch, args.steps, device)
    median = {name: statistics.median(t) for name, t in times.items()}
    return {
        "machine": machine_info(device=args.device),
        "settings": {k: v for k, v in vars(args).items() if k not in ("out", "stem")},
        "first_steps_s": compile_s,
        "step_ms_median": {k: round(v * 1e3, 2) for k, v in median.items()},
        "images_per_s": {k: round(args.batch_size / v, 1) for k, v in median.items()},
        "speedup_vs_eager": {k: round(median["eager"] / v, 3) for k, v in median.items()},
    }


def to_markdown(r: dict[str, Any]) -> str:
    rows = [
        f"| {k} | {r['step_ms_median'][k]} | {r['images_per_s'][k]} | {r['speedup_vs_eager'][k]}x | {r['first_steps_s'][k]} |"
        for k in VARIANTS
    ]
    return "\n".join([
        "# torch.compile for the training step (bench/compile_step.py)", "",
        f"Machine: {r['machine']}", f"Settings: {r['settings']}", "",
        "| variant | step ms (median) | images/s | vs eager | first 3 steps, s (compile) |", "|---|---|---|---|---|",
        *rows, "",
    ])  # fmt: skip


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--backbone", default="mobilenet_v3")
    p.add_argument("--input-size", type=int, default=320)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--steps", type=int, default=20, help="timed steps per variant per round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    p.add_argument("--stem", default="compile_step")
    p.add_argument("--smoke", action="store_true", help="write nothing to bench/results")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    results = run(args)
    publish(args, results, to_markdown(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
