"""The seed study's training stages, read in hindsight from one trial's per-epoch curves.

The study (``shared/seeds/000_*``) describes three stages where SSD training goes wrong, and its
loss-weight sweep shows where each setting meets them:

* **avoidance** (3.1, early stage): after the random start (boxes everywhere) the model lowers
  its face scores to escape the loss, and the detections above the evaluation threshold fall
  away. On the mini set every run goes there; a healthy one keeps improving its ranking meanwhile
  (AP rises) and its detections come back, a collapsed one stays at AP ~0.
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
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from hpo.values import finite_points as _finite
from model import report_keys as K
from model.health import LABELS, HealthConfig

__all__ = ["STAGES", "Stage", "monitor_verdicts", "read_stages"]

#: Avoidance: the detections per image fell to at most this fraction of the random start's.
AVOIDANCE_FRACTION = 0.5

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
    epochs = sorted(series.get(K.VAL_AP, {}))
    if not epochs:
        return []
    stages = [s for s in (_avoidance(series, epochs, cfg), _overfitting(series, epochs, cfg)) if s]
    stages += _fp_growth(series, epochs, cfg)
    return sorted(stages, key=lambda s: (s.first, STAGES.index(s.name)))


def monitor_verdicts(history: History) -> list[tuple[int, str]]:
    """``(epoch, diagnosis)`` for every epoch whose logged ``health/code`` is not healthy."""
    out = []
    for epoch, code in _finite(history.get(K.HEALTH_CODE, ())):
        index = int(code)
        if 0 < index < len(LABELS):
            out.append((epoch, LABELS[index]))
    return out


def _avoidance(series: dict[str, dict[int, float]], epochs: list[int], cfg: HealthConfig) -> Stage | None:
    """After the first evaluation (the random start, boxes everywhere), the first run of
    evaluations whose detections per image are at most :data:`AVOIDANCE_FRACTION` of the first
    one's (or at the monitor's ``collapse_max_detections``), beginning in the first third of the
    run. Its AP says which kind it is: a rising AP is a model whose ranking still learns while it
    predicts little, an AP that stays at the collapse level is the study's failure to escape."""
    dets, ap = series.get(K.VAL_DETECTIONS_PER_IMAGE, {}), series[K.VAL_AP]
    scored = [e for e in epochs if e in dets]
    if len(scored) < 2:
        return None
    limit = max(cfg.collapse_max_detections, AVOIDANCE_FRACTION * dets[scored[0]])
    early = max(2, math.ceil(len(scored) / 3))
    start = next((i for i in range(1, early) if dets[scored[i]] <= limit), None)
    if start is None:
        return None
    end = start
    while end + 1 < len(scored) and dets[scored[end + 1]] <= limit:
        end += 1
    first, last = scored[start], scored[end]
    ongoing = end == len(scored) - 1
    parts = [
        f"detections/image {dets[scored[0]]:.3g} at epoch {scored[0]} -> {min(dets[e] for e in scored[start : end + 1]):.3g}"
    ]
    top = series.get(K.VAL_TOP_SCORE, {})
    if scored[0] in top and last in top:
        parts.append(f"top face score {top[scored[0]]:.3g} -> {top[last]:.3g}")
    low = max(ap[e] for e in scored[start : end + 1]) <= cfg.collapse_max_ap
    parts.append(f"AP {ap[first]:.3g} -> {ap[last]:.3g}" + (" (at the collapse level)" if low else " (the ranking still learns)"))
    parts.append("never left" if ongoing else f"left at epoch {scored[end + 1]} ({dets[scored[end + 1]]:.3g} detections/image)")
    return Stage("avoidance", first, last, ongoing, "; ".join(parts))


def _fp_growth(series: dict[str, dict[int, float]], epochs: list[int], cfg: HealthConfig) -> list[Stage]:
    """Runs of at least ``fp_surge_window + 1`` evaluations over which false positives per image,
    as a running median of 3 (one evaluation swinging around the score threshold is not growth),
    never fall and grow by the monitor's ``fp_surge_factor`` and ``fp_surge_min_increase``."""
    fp, images = series.get(K.VAL_FP, {}), series.get(K.VAL_NUM_IMAGES, {})
    scored = [e for e in epochs if e in fp and images.get(e)]
    raw = [fp[e] / images[e] for e in scored]
    smooth = [statistics.median(raw[max(0, i - 2) : i + 1]) for i in range(len(raw))]
    precision = series.get(K.VAL_PRECISION, {})
    stages, start = [], 0
    for end in range(1, len(smooth) + 1):
        if end < len(smooth) and smooth[end] >= smooth[end - 1]:
            continue  # still rising (or flat): extend the run
        low, high, first, last = smooth[start], smooth[end - 1], scored[start], scored[end - 1]
        if end - start > cfg.fp_surge_window and high >= cfg.fp_surge_factor * low and high - low >= cfg.fp_surge_min_increase:
            p = f", precision {precision[first]:.3g} -> {precision[last]:.3g}" if first in precision and last in precision else ""
            detail = f"false positives/image (running median of 3) {low:.3g} -> {high:.3g}{p}"
            stages.append(Stage("fp-growth", first, last, end == len(smooth), detail))
        start = end
    return stages


def _overfitting(series: dict[str, dict[int, float]], epochs: list[int], cfg: HealthConfig) -> Stage | None:
    """From the epoch after the best AP to the end, when the last AP is below the best by the
    monitor's overfitting margins and the training loss fell since the best."""
    ap, loss = series[K.VAL_AP], series.get(K.TRAIN_LOSS, {})
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
