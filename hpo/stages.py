"""The seed study's training stages, read in hindsight from one trial's per-epoch curves.

The study (``shared/seeds/000_*``) describes three stages where SSD training goes wrong, and its
loss-weight sweep shows where each setting meets them:

* **avoidance** (3.1, early stage): after the random start (many boxes everywhere) the model
  lowers every face score to escape the loss, so no detection passes the evaluation threshold.
  On the mini set every run goes there; a healthy one keeps improving its ranking meanwhile (AP
  rises) and its detections come back, a collapsed one stays at AP ~0.
* **fp-growth** (3.2, mid stage): false positives per image rise over consecutive evaluations
  (many small, redundant boxes), while precision falls.
* **overfitting** (3.3, late stage): validation AP falls well below its best while the training
  loss keeps falling.

This is a description of the curves after the run, for the report. The health monitor
(``model/health.py``) judges the same signals during the run, with warm-up grace, smoothing and
patience, and decides what stops a trial; the thresholds here are the monitor's defaults, so a
stage and a diagnosis of the same trial speak the same language.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from model.health import LABELS, HealthConfig

__all__ = ["STAGES", "Stage", "monitor_verdicts", "read_stages"]

StageName = Literal["avoidance", "fp-growth", "overfitting"]
STAGES: tuple[StageName, ...] = ("avoidance", "fp-growth", "overfitting")

History = Mapping[str, Sequence[tuple[int, float]]]


@dataclass(frozen=True)
class Stage:
    """One stage of one trial: the epochs it spans and what the curves show there."""

    name: StageName
    first: int
    last: int
    ongoing: bool
    """Still under way at the trial's last epoch (avoidance never left, AP still below its best)."""
    detail: str

    @property
    def span(self) -> str:
        return f"{self.first}" if self.first == self.last else f"{self.first}-{self.last}"


def read_stages(history: History, cfg: HealthConfig | None = None) -> list[Stage]:
    """The study's stages found in one trial's history (``{metric: [(epoch, value), ...]}``, as
    MLflow holds it), in epoch order. Metrics a trial did not log simply find no stage."""
    cfg = cfg or HealthConfig()
    series = {key: dict(_finite(points)) for key, points in history.items()}
    epochs = sorted(series.get("val/ap", {}))
    if not epochs:
        return []
    stages = [s for s in (_avoidance(series, epochs, cfg), _overfitting(series, epochs, cfg)) if s]
    stages += _fp_growth(series, epochs, cfg)
    return sorted(stages, key=lambda s: (s.first, STAGES.index(s.name)))


def monitor_verdicts(history: History) -> list[tuple[int, str]]:
    """``(epoch, diagnosis)`` for every epoch whose logged ``health/code`` is not healthy."""
    out = []
    for epoch, code in _finite(history.get("health/code", ())):
        index = int(code)
        if 0 < index < len(LABELS):
            out.append((epoch, LABELS[index]))
    return out


def _avoidance(series: dict[str, dict[int, float]], epochs: list[int], cfg: HealthConfig) -> Stage | None:
    """The first run of evaluations where (almost) nothing passes the score threshold: at most the
    monitor's ``collapse_max_detections`` per image. Its AP says which kind it is: a rising AP is a
    model whose ranking still learns under the threshold, an AP that stays at the collapse level is
    the study's failure to escape the early stage."""
    dets, ap = series.get("val/detections_per_image", {}), series["val/ap"]
    scored = [e for e in epochs if e in dets]
    start = next((i for i, e in enumerate(scored) if dets[e] <= cfg.collapse_max_detections), None)
    if start is None:
        return None
    end = start
    while end + 1 < len(scored) and dets[scored[end + 1]] <= cfg.collapse_max_detections:
        end += 1
    first, last = scored[start], scored[end]
    ongoing = end == len(scored) - 1
    before = f"from {dets[scored[start - 1]]:.3g} detections/image at epoch {scored[start - 1]} " if start else ""
    parts = [f"{before}to <= {cfg.collapse_max_detections:g}"]
    top = series.get("val/top_score", {})
    if first in top and last in top and first != last:
        parts.append(f"top face score {top[first]:.3g} -> {top[last]:.3g}")
    low = max(ap[e] for e in scored[start : end + 1]) <= cfg.collapse_max_ap
    parts.append(f"AP {ap[first]:.3g} -> {ap[last]:.3g}" + (" (at the collapse level)" if low else " (the ranking still learns)"))
    parts.append("never left" if ongoing else f"left at epoch {scored[end + 1]} ({dets[scored[end + 1]]:.3g} detections/image)")
    return Stage("avoidance", first, last, ongoing, "; ".join(parts))


def _fp_growth(series: dict[str, dict[int, float]], epochs: list[int], cfg: HealthConfig) -> list[Stage]:
    """Maximal runs of evaluations over which false positives per image never fall and grow by the
    monitor's ``fp_surge_factor`` and ``fp_surge_min_increase``."""
    fp, images = series.get("val/fp", {}), series.get("val/num_images", {})
    points = [(e, fp[e] / images[e]) for e in epochs if e in fp and images.get(e)]
    precision = series.get("val/precision", {})
    stages, start = [], 0
    for end in range(1, len(points) + 1):
        if end < len(points) and points[end][1] >= points[end - 1][1]:
            continue  # still rising (or flat): extend the run
        (first, low), (last, high) = points[start], points[end - 1]
        if end - 1 > start and high >= cfg.fp_surge_factor * low and high - low >= cfg.fp_surge_min_increase:
            p = f", precision {precision[first]:.3g} -> {precision[last]:.3g}" if first in precision and last in precision else ""
            ongoing = end == len(points)
            stages.append(Stage("fp-growth", first, last, ongoing, f"false positives/image {low:.3g} -> {high:.3g}{p}"))
        start = end
    return stages


def _overfitting(series: dict[str, dict[int, float]], epochs: list[int], cfg: HealthConfig) -> Stage | None:
    """From the epoch after the best AP to the end, when the last AP is below the best by the
    monitor's overfitting margins and the training loss fell since the best."""
    ap, loss = series["val/ap"], series.get("train/loss", {})
    best = max(epochs, key=lambda e: (ap[e], -e))
    last = epochs[-1]
    drop = ap[best] - ap[last]
    if best == last or ap[best] < cfg.overfit_min_best_ap:
        return None
    if drop < max(cfg.overfit_min_drop, cfg.overfit_rel_drop * ap[best]):
        return None
    if best not in loss or last not in loss or loss[last] > (1 - cfg.overfit_min_loss_drop) * loss[best]:
        return None
    after = epochs[epochs.index(best) + 1]
    detail = f"AP {ap[best]:.3g} at epoch {best} -> {ap[last]:.3g}, training loss {loss[best]:.3g} -> {loss[last]:.3g}"
    return Stage("overfitting", after, last, True, detail)


def _finite(points: Sequence[tuple[int, float]]) -> list[tuple[int, float]]:
    return sorted((int(s), float(v)) for s, v in points if isinstance(v, (int, float)) and math.isfinite(v))
