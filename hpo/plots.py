"""Figures of a search: one trial's learning curves, many trials overlaid, the failure atlas and
parameter importances.

Every function returns a :class:`matplotlib.figure.Figure` built without ``pyplot``: no global
backend, no open-figure registry, nothing a Tune callback thread or a headless worker could trip
over (a bare ``Figure`` renders with the Agg canvas). :func:`png_bytes` writes it.

A trial's history is ``{metric key: [(epoch, value), ...]}``, the shape of MLflow's metric history
(see ``TRIAL_METRICS`` in ``hpo/tracking.py``); only the keys present are drawn.
"""

from __future__ import annotations

import io
import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter

from hpo import layout as L
from hpo.values import finite_points as _finite
from hpo.values import is_finite, is_number
from model import report_keys as K

__all__ = [
    "AtlasPoint",
    "History",
    "SettingRow",
    "atlas_pairs",
    "category_color",
    "category_marker",
    "category_order",
    "failure_atlas",
    "importance_bars",
    "learning_curves",
    "overlay_curves",
    "png_bytes",
    "setting_curves",
    "sweep_summary",
    "trial_category",
]

History = Mapping[str, Sequence[tuple[int, float]]]

#: Panels of one trial's curves: (title, keys in drawing order). ``train/loss*`` keys not named
#: here (a new loss part) join the loss panel; other unknown keys get an "other" panel.
#: Not a report key: false positives per validation image, drawn when ``val/fp`` and ``val/num_images`` are.
_FP_PER_IMAGE = "val/fp_per_image"
_PANELS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("training loss", (K.TRAIN_LOSS, K.TRAIN_LOSS_CLS, K.TRAIN_LOSS_BOX)),
    ("validation", (K.VAL_AP, K.VAL_RECALL, K.VAL_PRECISION, K.VAL_MEAN_IOU, K.VAL_TOP_SCORE)),
    ("per validation image", (K.VAL_DETECTIONS_PER_IMAGE, _FP_PER_IMAGE)),
    ("validation counts", (K.VAL_TP, K.VAL_FP, K.VAL_FN)),
    ("optimisation", (K.TRAIN_GRAD_NORM, K.TRAIN_POS_ANCHORS, K.TRAIN_EMPTY_BATCHES)),
    ("learning rate", (K.TRAIN_LR,)),
    ("loss weights", (K.TRAIN_CLASS_WEIGHT, K.TRAIN_BOX_WEIGHT)),
)
# Bookkeeping, not curves: the health code is a label, raw/ duplicates the search metric.
_SKIP_PREFIXES = ("health/", L.RAW_PREFIX, "time/")
_SKIP_KEYS = {K.VAL_NUM_IMAGES, K.VAL_NUM_GT, K.TRAIN_IMAGES, K.EPOCH}

#: Outcome categories in legend order, with fixed colours so every figure of a report agrees. A
#: recovered trial (``recovered:<diagnosis>``) has the light shade of the colour of the failure it
#: recovered from, and its own marker (:func:`category_marker`).
_COLORS: dict[str, str] = {
    L.HEALTHY: "#2ca02c",
    **{f"{L.COMPLETED}:{d}": c for d, c in (("fp-surge", "#bcbd22"), ("recall-decline", "#17becf"), ("overfitting", "#ff7f0e"))},
    **{
        L.recovered(d): c
        for d, c in (
            ("diverged", "#ff9896"),
            ("background-collapse", "#6baed6"),
            ("stalled", "#c49c94"),
            ("no-positives", "#f7b6d2"),
            ("fp-surge", "#dbdb8d"),
            ("recall-decline", "#9edae5"),
            ("overfitting", "#ffbb78"),
        )
    },  # fmt: skip
    L.PRUNED: "#8c8c8c",
    **{
        L.stopped(d): c
        for d, c in (
            ("diverged", "#d62728"),
            ("background-collapse", "#1f77b4"),
            ("stalled", "#8c564b"),
            ("no-positives", "#e377c2"),
            ("fp-surge", "#9a9a00"),
            ("recall-decline", "#0f8c99"),
            ("overfitting", "#c85a00"),
        )
    },  # fmt: skip
    L.ERROR: "#000000",
    L.INTERRUPTED: "#aec7e8",
    L.RUNNING: "#c7c7c7",
}
_EXTRA_COLORS = ("#9467bd", "#393b79", "#637939", "#843c39", "#7b4173", "#3182bd")

#: The atlas's views: pairs of sampled params where failures separate (x, y).
_WARMUP_KEYS = ("schedule.warmup_epochs", "schedule.warmup_iters")
_ATLAS_PAIRS: tuple[tuple[str, str], ...] = (
    ("loss.box_weight", "loss.class_weight"),
    ("optim.lr", "<warmup>"),
    ("loss.neg_pos_ratio", "loss.box_weight"),
)


# -- outcome categories ----------------------------------------------------------------------------


def trial_category(outcome: str, diagnosis: str | None) -> str:
    """The colour class of a trial: ``healthy`` (completed, no diagnosis), ``completed:<diagnosis>``
    (completed with a warning such as ``fp-surge``), ``recovered:<diagnosis>`` (rolled back from that
    failure and fixed, then ran to its end), ``pruned``, ``stopped:<diagnosis>``, ``error``,
    ``interrupted`` or ``running`` (the values of the ``hpo.outcome`` / ``hpo.diagnosis`` tags)."""
    if outcome == L.COMPLETED:
        return L.HEALTHY if diagnosis in (None, "", L.HEALTHY) else f"{outcome}:{diagnosis}"
    if outcome.startswith(L.PRUNED):
        return L.PRUNED
    return outcome


def category_color(category: str) -> str:
    """The category's colour: fixed for the known ones, a stable pick from a spare palette otherwise."""
    if category in _COLORS:
        return _COLORS[category]
    return _EXTRA_COLORS[sum(map(ord, category)) % len(_EXTRA_COLORS)]


def category_marker(category: str) -> str:
    """The category's marker: a diamond for a recovered trial, a circle for every other."""
    return "D" if L.is_recovered(category) else "o"


def category_order(categories: Iterable[str]) -> list[str]:
    """The distinct categories in legend order: healthy, warnings, recovered, pruned, stopped, error, others."""
    known = list(_COLORS)
    return sorted(set(categories), key=lambda c: (known.index(c) if c in known else len(known), c))


# -- one trial -------------------------------------------------------------------------------------


def learning_curves(history: History, title: str | None = None) -> Figure:
    """One trial's per-epoch curves, one panel per group of metrics that is present.

    Panels: training loss and its parts; AP, recall, precision, mean IoU, top score; detections
    (and false positives, when ``val/fp`` and ``val/num_images`` are both logged) per validation
    image; TP/FP/FN; gradient norm, positive anchors and batches without any; learning rate; the
    loss weights applied. A panel whose values span more than three decades (a diverging loss)
    gets a log axis.

    Args:
        history: ``{metric key: [(epoch, value), ...]}``; non-finite values are dropped.
        title: the figure's title, e.g. the trial id and its outcome.

    Raises:
        ValueError: nothing in ``history`` has a finite value to draw.
    """
    series = {k: _finite(v) for k, v in history.items() if not _skipped(k)}
    series.update(_fp_per_image(history))
    series = {k: v for k, v in series.items() if v}
    panels = _group(series)
    if not panels:
        raise ValueError(f"no finite values to draw (keys: {sorted(history) or 'none'})")

    ncols = min(3, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    fig = Figure(figsize=(4.4 * ncols, 3.1 * nrows + (0.4 if title else 0)), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, (name, keys) in zip(axes, panels):
        for key in keys:
            steps, values = zip(*series[key])
            ax.plot(steps, values, marker="o", markersize=3, linewidth=1.4, label=key)
        _auto_log(ax, [v for k in keys for _, v in series[k]])
        _epoch_axis(ax)
        ax.set_title(name, fontsize=10)
        ax.legend(fontsize=7, loc="best")
    for ax in axes[len(panels) :]:
        ax.set_visible(False)
    if title:
        fig.suptitle(title, fontsize=11)
    return fig


def _skipped(key: str) -> bool:
    return key in _SKIP_KEYS or key.startswith(_SKIP_PREFIXES)


def _group(series: Mapping[str, Any]) -> list[tuple[str, list[str]]]:
    claimed: set[str] = set()
    panels = []
    for name, keys in _PANELS:
        present = [k for k in keys if k in series]
        if name == "training loss":
            present += sorted(k for k in series if k.startswith(K.TRAIN_LOSS) and k not in keys)
        claimed.update(present)
        if present:
            panels.append((name, present))
    other = sorted(k for k in series if k not in claimed)
    if other:
        panels.append(("other", other))
    return panels


def _fp_per_image(history: History) -> dict[str, list[tuple[int, float]]]:
    """``val/fp / val/num_images`` per epoch, when the trial logged both (and not the ratio itself)."""
    if _FP_PER_IMAGE in history or K.VAL_FP not in history or K.VAL_NUM_IMAGES not in history:
        return {}
    images = dict(_finite(history[K.VAL_NUM_IMAGES]))
    return {_FP_PER_IMAGE: [(s, v / images[s]) for s, v in _finite(history[K.VAL_FP]) if images.get(s)]}


# -- many trials -----------------------------------------------------------------------------------

#: What :func:`overlay_curves` draws by default (those present).
OVERLAY_KEYS = (K.TRAIN_LOSS, K.TRAIN_LOSS_CLS, K.TRAIN_LOSS_BOX, K.VAL_AP, K.VAL_RECALL, K.VAL_DETECTIONS_PER_IMAGE)


def overlay_curves(
    histories: Mapping[str, History],
    categories: Mapping[str, str],
    keys: Sequence[str] = OVERLAY_KEYS,
    highlight: str | None = None,
    title: str | None = None,
) -> Figure:
    """Many trials' curves overlaid, one panel per metric, each line coloured by its trial's category.

    Args:
        histories: ``{trial label: history}``.
        categories: ``{trial label: category}`` (see :func:`trial_category`); missing = ``running``.
        keys: the metrics to draw, one panel each, those that some trial logged.
        highlight: a trial label to draw thick and on top (the best trial).
        title: the figure's title.

    Raises:
        ValueError: no trial logged any of ``keys``.
    """
    present = [k for k in keys if any(_finite(h.get(k, ())) for h in histories.values())]
    if not present:
        raise ValueError(f"no trial logged any of {list(keys)}")
    ncols = min(3, len(present))
    nrows = math.ceil(len(present) / ncols)
    fig = Figure(figsize=(4.4 * ncols, 3.1 * nrows + 0.6), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    # Failures drawn last (on top): they are usually the fewer lines; the highlighted one above all.
    order = sorted(histories, key=lambda t: (t == highlight, categories.get(t, L.RUNNING) != L.HEALTHY))
    for ax, key in zip(axes, present):
        values: list[float] = []
        for label in order:
            points = _finite(histories[label].get(key, ()))
            if not points:
                continue
            steps, ys = zip(*points)
            values += ys
            best = label == highlight
            category = categories.get(label, L.RUNNING)
            ax.plot(
                steps,
                ys,
                color=category_color(category),
                linewidth=2.6 if best else 1.0,
                alpha=1.0 if best else 0.75,
                marker=category_marker(category),
                markersize=3 if best else 2,
                zorder=3 if best else 2,
            )
        _auto_log(ax, values)
        _epoch_axis(ax)
        ax.set_title(key, fontsize=10)
    for ax in axes[len(present) :]:
        ax.set_visible(False)
    counts = Counter(categories.get(t, L.RUNNING) for t in histories)
    handles = [
        Line2D([], [], color=category_color(c), linewidth=2, marker=category_marker(c), markersize=4, label=f"{c} ({counts[c]})")
        for c in category_order(counts)
    ]
    if highlight is not None and highlight in histories:
        handles.append(Line2D([], [], color="#444444", linewidth=2.6, label=f"best: {highlight}"))
    fig.legend(handles=handles, loc="outside lower center", ncols=min(4, len(handles)), fontsize=8)
    if title:
        fig.suptitle(title, fontsize=11)
    return fig


# -- the failure atlas -----------------------------------------------------------------------------


@dataclass(frozen=True)
class AtlasPoint:
    """One trial in the atlas: its label, category and values (sampled params and the metric)."""

    label: str
    category: str
    values: Mapping[str, Any] = field(default_factory=dict)


def atlas_pairs(sampled: Iterable[str], metric: str) -> list[tuple[str, str]]:
    """The atlas's views for a search that sampled ``sampled``: box weight x class weight, learning
    rate x warm-up (``warmup_epochs`` or ``warmup_iters``, whichever was sampled), neg:pos ratio x
    box weight, neg:pos ratio x ``metric``, each kept only when both of its params were sampled.
    When none is left (a one-parameter sweep), each sampled param against ``metric``."""
    sampled = list(sampled)
    warmup = next((k for k in _WARMUP_KEYS if k in sampled), None)
    candidates = [(x, warmup if y == "<warmup>" else y) for x, y in _ATLAS_PAIRS]
    pairs = [(x, y) for x, y in candidates if x in sampled and y in sampled]
    if "loss.neg_pos_ratio" in sampled:
        pairs.append(("loss.neg_pos_ratio", metric))
    return pairs or [(key, metric) for key in sampled]


def failure_atlas(
    points: Sequence[AtlasPoint],
    pairs: Sequence[tuple[str, str]],
    log_axes: Iterable[str] = (),
    limits: Mapping[str, tuple[float, float]] | None = None,
    title: str | None = None,
) -> Figure:
    """The sampled space projected on pairs of params, each trial a point coloured by its category.

    A value that is missing or not finite (a stopped trial has no metric) is drawn as a hollow
    marker on the bottom (or left) edge of its panel, so failed trials stay visible. Text values
    (categorical params) are placed at their index with the text as tick label. A recovered trial
    is a diamond (:func:`category_marker`) in the shade of the failure it recovered from, at its
    sampled params (where the sampled configuration failed), with the metric it measured after
    its interventions.

    Args:
        points: the trials.
        pairs: ``(x key, y key)`` per panel, e.g. from :func:`atlas_pairs`.
        log_axes: keys drawn on a log axis (log-sampled params).
        limits: ``{key: (low, high)}``, the sampled range of a param, so that each panel shows
            where the trials lie in the whole space (default: the trials' own range).
        title: the figure's title.

    Raises:
        ValueError: ``pairs`` or ``points`` is empty.
    """
    if not pairs or not points:
        raise ValueError("the atlas needs at least one pair of params and one trial")
    log_axes = set(log_axes)
    limits = limits or {}
    ncols = min(3, len(pairs))
    nrows = math.ceil(len(pairs) / ncols)
    fig = Figure(figsize=(4.6 * ncols, 3.9 * nrows + 0.7), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    order = category_order(p.category for p in points)
    for ax, (xkey, ykey) in zip(axes, pairs):
        xs = _coordinates(ax, "x", [p.values.get(xkey) for p in points], xkey in log_axes, limits.get(xkey))
        ys = _coordinates(ax, "y", [p.values.get(ykey) for p in points], ykey in log_axes, limits.get(ykey))
        for category in order:
            idx = [i for i, p in enumerate(points) if p.category == category]
            _scatter(ax, [xs[i] for i in idx], [ys[i] for i in idx], category_color(category), category_marker(category))
        ax.set_xlabel(xkey, fontsize=9)
        ax.set_ylabel(ykey, fontsize=9)
        ax.grid(True, alpha=0.3, which="both")
    for ax in axes[len(pairs) :]:
        ax.set_visible(False)
    counts = Counter(p.category for p in points)
    handles = [
        Line2D([], [], linestyle="", marker=category_marker(c), markersize=7, color=category_color(c), label=f"{c} ({counts[c]})")
        for c in order
    ]
    handles.append(
        Line2D(
            [],
            [],
            linestyle="",
            marker="o",
            markersize=7,
            markerfacecolor="none",
            color="#444444",
            label="no value (on the edge)",
        )
    )
    fig.legend(handles=handles, loc="outside lower center", ncols=min(4, len(handles)), fontsize=8)
    if title:
        fig.suptitle(title, fontsize=11)
    return fig


def _coordinates(ax: Any, axis: str, values: list[Any], log: bool, limits: tuple[float, float] | None) -> list[float | None]:
    """Numbers for one axis (``None`` = no value); text values become category indices."""
    if any(v is not None and not is_number(v) for v in values):
        texts = sorted({str(v) for v in values if v is not None})
        index = {t: i for i, t in enumerate(texts)}
        getattr(ax, f"set_{axis}ticks")(range(len(texts)), texts, fontsize=8)
        getattr(ax, f"set_{axis}lim")(-0.5, len(texts) - 0.5)
        return [None if v is None else float(index[str(v)]) for v in values]
    numbers_ = [float(v) if is_finite(v) and (v > 0 or not log) else None for v in values]
    present = [v for v in numbers_ if v is not None]
    lo, hi = limits if limits is not None else (min(present, default=1.0), max(present, default=1.0))
    log = log and lo > 0
    if log:
        pad = (hi / lo) ** 0.05 if hi > lo else 2.0
        getattr(ax, f"set_{axis}scale")("log")
        getattr(ax, f"set_{axis}lim")(lo / pad, hi * pad)
        # Labels at 1-2-5 within a narrow range, at the decades over a wide one; no minor labels.
        target = getattr(ax, f"{axis}axis")
        target.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0) if hi / lo < 300 else (1.0,)))
        target.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        target.set_minor_formatter(NullFormatter())
    elif limits is not None:
        pad = (hi - lo) * 0.05 or 0.5
        getattr(ax, f"set_{axis}lim")(lo - pad, hi + pad)
    return numbers_


def _scatter(ax: Any, xs: list[float | None], ys: list[float | None], color: str, marker: str = "o") -> None:
    full = [(x, y) for x, y in zip(xs, ys) if x is not None and y is not None]
    # A diamond (a recovered trial, in a light shade) gets a dark edge: it stands out on any point.
    edge = "white" if marker == "o" else "#333333"
    if full:
        ax.scatter(*zip(*full), s=42, color=color, marker=marker, edgecolors=edge, linewidths=0.6, zorder=3)
    # One coordinate missing: hollow marker on the edge of that axis (axes-fraction coordinates).
    no_y = [x for x, y in zip(xs, ys) if x is not None and y is None]
    if no_y:
        ax.scatter(no_y, [0.02] * len(no_y), s=42, marker=marker, facecolors="none", edgecolors=color, linewidths=1.4,
                   transform=ax.get_xaxis_transform(), clip_on=False, zorder=3)  # fmt: skip
    no_x = [y for x, y in zip(xs, ys) if x is None and y is not None]
    if no_x:
        ax.scatter([0.02] * len(no_x), no_x, s=42, marker=marker, facecolors="none", edgecolors=color, linewidths=1.4,
                   transform=ax.get_yaxis_transform(), clip_on=False, zorder=3)  # fmt: skip


# -- a grid sweep, setting by setting -------------------------------------------------------------

#: The columns of :func:`setting_curves`: (title, keys).
SETTING_PANELS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("loss parts (unweighted)", (K.TRAIN_LOSS_CLS, K.TRAIN_LOSS_BOX)),
    ("AP", (K.VAL_AP,)),
    ("recall, precision", (K.VAL_RECALL, K.VAL_PRECISION)),
    ("mean IoU", (K.VAL_MEAN_IOU,)),
    ("per validation image", (K.VAL_DETECTIONS_PER_IMAGE, _FP_PER_IMAGE)),
)
#: Shading of the seed study's stages (``hpo/stages.py``) behind the curves.
STAGE_COLORS = {"avoidance": "#9e9e9e", "fp-growth": "#bcbd22", "overfitting": "#ff7f0e"}


@dataclass(frozen=True)
class SettingRow:
    """One setting of a sweep: a row of :func:`setting_curves`."""

    label: str
    """What distinguishes the setting, e.g. ``box_weight=0.01``."""
    category: str
    history: History
    stages: Sequence[tuple[str, int, int]] = ()
    """``(stage name, first epoch, last epoch)`` to shade."""
    verdicts: Sequence[tuple[int, str]] = ()
    """``(epoch, diagnosis)`` of the health monitor, drawn as dashed lines."""


def setting_curves(rows: Sequence[SettingRow], title: str | None = None) -> Figure:
    """Small multiples of a sweep: one row per setting, one column per group of
    :data:`SETTING_PANELS`, the same y range down each column so settings compare at a glance.
    Stages are shaded behind the curves; the first epoch of each monitor diagnosis is a dashed line.

    Raises:
        ValueError: no rows, or no row logged any of the panels' metrics.
    """
    series = [{k: _finite(v) for k, v in {**row.history, **_fp_per_image(row.history)}.items()} for row in rows]
    columns = [(name, keys) for name, keys in SETTING_PANELS if any(s.get(k) for s in series for k in keys)]
    if not rows or not columns:
        raise ValueError("no setting logged any of the sweep's curves")
    fig = Figure(figsize=(3.3 * len(columns), 1.75 * len(rows) + 1.0), layout="constrained")
    axes = fig.subplots(len(rows), len(columns), squeeze=False, sharex=True)
    for c, (name, keys) in enumerate(columns):
        values = [v for s in series for k in keys for _, v in s.get(k, ())]
        for r, (row, points) in enumerate(zip(rows, series)):
            ax = axes[r][c]
            for stage, first, last in row.stages:
                ax.axvspan(first - 0.5, last + 0.5, color=STAGE_COLORS.get(stage, "#dddddd"), alpha=0.22, linewidth=0)
            for k, key in enumerate(keys):
                if points.get(key):
                    ax.plot(*zip(*points[key]), marker="o", markersize=2.5, linewidth=1.2, color=f"C{k}", label=key)
            for epoch, diagnosis in _first_of_each(row.verdicts):
                ax.axvline(epoch, color=category_color(L.stopped(diagnosis)), linestyle="--", linewidth=1.2)
            _auto_log(ax, values)
            if values and ax.get_yscale() == "linear":
                lo, hi = min(values), max(values)
                pad = (hi - lo) * 0.06 or 0.05
                ax.set_ylim(lo - pad, hi + pad)
            _epoch_axis(ax)
            if r < len(rows) - 1:
                ax.set_xlabel("")
            if r == 0:
                ax.set_title(name, fontsize=9)
            if c == 0:
                ax.set_ylabel(f"{row.label}\n{row.category}", fontsize=8)
    handles = [
        Line2D([], [], color=f"C{k}", linewidth=1.5, label=key)
        for name, keys in columns
        for k, key in enumerate(keys)
        if len(keys) > 1
    ]
    handles += [Line2D([], [], color=color, linewidth=6, alpha=0.35, label=stage) for stage, color in STAGE_COLORS.items()]
    diagnoses = sorted({d for row in rows for _, d in row.verdicts})
    handles += [Line2D([], [], color=category_color(L.stopped(d)), linestyle="--", label=f"monitor: {d}") for d in diagnoses]
    fig.legend(handles=handles, loc="outside lower center", ncols=min(5, len(handles)), fontsize=7)
    if title:
        fig.suptitle(title, fontsize=11)
    return fig


def sweep_summary(
    key: str, points: Sequence[tuple[float, float | None, float | None, str]], log: bool, metric: str = K.VAL_AP
) -> Figure:
    """The sweep's outcome against its one swept value: best and last ``metric`` per setting.

    Args:
        key: the swept param, e.g. ``loss.box_weight``.
        points: ``(value, best, last, category)`` per setting (``None``: no value logged).
        log: a log x axis (a sweep over decades).

    Raises:
        ValueError: ``points`` is empty.
    """
    if not points:
        raise ValueError("no settings to draw")
    points = sorted(points, key=lambda p: p[0])
    fig = Figure(figsize=(6.4, 3.6), layout="constrained")
    ax = fig.subplots()
    xs = [p[0] for p in points]
    ax.plot(xs, [p[1] if p[1] is not None else math.nan for p in points], color="#444444", linewidth=1, zorder=1)
    for x, best, last, category in points:
        color = category_color(category)
        ax.scatter([x], [best if best is not None else 0.0], s=55, color=color, zorder=3,
                   marker=category_marker(category) if best is not None else "x")  # fmt: skip
        if last is not None:
            ax.scatter([x], [last], s=40, facecolors="none", edgecolors=color, linewidths=1.4, zorder=3)
    if log and min(xs) > 0:
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.set_xlabel(key, fontsize=9)
    ax.set_ylabel(metric, fontsize=9)
    ax.grid(True, alpha=0.3, which="both")
    counts = Counter(p[3] for p in points)
    handles = [
        Line2D([], [], linestyle="", marker=category_marker(c), color=category_color(c), label=c) for c in category_order(counts)
    ]
    handles += [
        Line2D([], [], linestyle="", marker="o", color="#444444", label=f"best {metric}"),
        Line2D([], [], linestyle="", marker="o", markerfacecolor="none", color="#444444", label=f"last {metric}"),
    ]
    ax.legend(handles=handles, fontsize=7, loc="best")
    return fig


def _first_of_each(verdicts: Iterable[tuple[int, str]]) -> list[tuple[int, str]]:
    first: dict[str, int] = {}
    for epoch, diagnosis in sorted(verdicts):
        first.setdefault(diagnosis, epoch)
    return [(epoch, diagnosis) for diagnosis, epoch in first.items()]


# -- importances -----------------------------------------------------------------------------------


def importance_bars(importances: Mapping[str, float], title: str | None = None, color: str = "#1f77b4") -> Figure:
    """Horizontal bars of parameter importances, the most important on top.

    Raises:
        ValueError: ``importances`` is empty.
    """
    if not importances:
        raise ValueError("no importances to draw")
    ranked = sorted(importances.items(), key=lambda kv: kv[1])
    fig = Figure(figsize=(5.6, 0.45 * len(ranked) + 1.2), layout="constrained")
    ax = fig.subplots()
    bars = ax.barh([k for k, _ in ranked], [v for _, v in ranked], color=color)
    ax.bar_label(bars, fmt="%.2f", fontsize=8, padding=2)
    ax.set_xlim(0, max(1.0, max(v for _, v in ranked)) * 1.12)
    ax.set_xlabel("importance (normalised to sum 1)", fontsize=9)
    ax.tick_params(axis="y", labelsize=8)
    if title:
        ax.set_title(title, fontsize=10)
    return fig


# -- output ----------------------------------------------------------------------------------------


def png_bytes(fig: Figure, dpi: int = 90) -> bytes:
    """The figure as PNG bytes."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, metadata={"Software": None})  # no tool/URL stamp
    return buf.getvalue()


# -- helpers ---------------------------------------------------------------------------------------


def _auto_log(ax: Any, values: Sequence[float]) -> None:
    """A log y axis when positive values span more than three decades (an exploding loss)."""
    if values and min(values) > 0 and max(values) / min(values) > 1e3:
        ax.set_yscale("log")


def _epoch_axis(ax: Any) -> None:
    lo, hi = ax.dataLim.intervalx
    if lo == hi:  # one epoch: matplotlib would spread fractional ticks around it
        ax.set_xlim(lo - 1, hi + 1)
    ax.set_xlabel("epoch", fontsize=9)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.tick_params(labelsize=8)
    ax.grid(True, alpha=0.3)
