"""What a search prints while it runs: a compact progress table and one line per trial end.

:class:`SearchConsole` is a Tune callback. The search runs Tune silent (``RunConfig(verbose=0)``
with Tune's legacy output engine, see ``hpo/search.py``) and this callback prints instead:

* every :data:`TABLE_EVERY_S` seconds when something happened since the last one (a trial
  started, reported or ended), and at the end of the search, a table with one row per trial: its
  id, status, epoch, the search metric as measured (``raw/<metric>``: never the penalty a stopped
  trial reports to Optuna, nor the zeros of an epoch stopped before it validated), the trial's
  best value so far, and how it ended (or, while it runs, the health monitor's diagnosis);
* one line as each trial ends, e.g. ``a46ff7ca stopped: diverged at step 37 (epoch 2): loss
  explosion: loss 3.1e+13 > 100 x its early median 9.37`` or ``a46ff7ca pruned at epoch 3 (val/ap
  0.0410)``, and one when a failed trial is retried.

The lines are built by plain functions of a trial's last result (:func:`end_line`,
:func:`error_line`, :func:`progress_table`), with the outcome decided by :func:`hpo.layout.trial_end`
as everywhere else. Imports nothing heavy (no torch).
"""

from __future__ import annotations

import functools
import logging
import re
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from ray import tune

from hpo import layout as L
from hpo.values import is_finite, is_number
from model import report_keys as K

if TYPE_CHECKING:
    from ray.tune.experiment import Trial

__all__ = ["TABLE_EVERY_S", "SearchConsole", "end_line", "error_line", "measured_value", "one_line_error", "progress_table"]

_LOG = logging.getLogger(__name__)

#: The table at most this often (seconds), and only when something happened since the last one.
TABLE_EVERY_S = 30.0
#: ...but at least this often while trials run, so that a long epoch is not mistaken for a hang.
TABLE_QUIET_S = 300.0
#: Rows of the table beyond which ended trials are left out (only the best of them shown).
MAX_ROWS = 20
#: An error line's message is cut here.
_ERROR_CHARS = 200

Mode = Literal["max", "min"]


# -- what a result says ----------------------------------------------------------------------------


def measured_value(result: Mapping[str, Any], metric: str) -> float | None:
    """The search metric as the trial measured it, or ``None`` where nothing was measured.

    ``raw/<metric>`` first (:func:`hpo.trainable.tune_metrics` keeps it beside the penalty); an
    epoch that validated no image (a health stop mid-epoch) reports placeholder zeros, not a value.
    """
    if metric in K.VAL_KEYS and result.get(K.VAL_NUM_IMAGES) == 0:
        return None
    value = result.get(f"{L.RAW_PREFIX}{metric}", result.get(metric))
    return float(value) if is_number(value) else None


def _better(a: float, b: float, mode: Mode) -> bool:
    return a > b if mode == "max" else a < b


def _num(value: float | None) -> str:
    """A metric value in a fixed, short form (AP-like values to 4 decimals, counts compactly)."""
    if value is None:
        return "-"
    if abs(value) >= L.NONFINITE_FILL:
        return "non-finite"  # what tune_metrics made of a NaN or inf
    return f"{value:.4f}" if abs(value) < 10 else f"{value:.4g}"


def _epoch(result: Mapping[str, Any]) -> int | None:
    return int(result[K.EPOCH]) if is_number(result.get(K.EPOCH)) else None


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def end_line(trial_id: str, last: Mapping[str, Any], metric: str, max_epochs: int, best: float | None = None) -> str:
    """The one line printed when a trial ends on its own (not errored), from its last result.

    ``best``: the trial's best measured value, shown when it differs from the last one.
    """
    end = L.trial_end(last, max_epochs)
    value = measured_value(last, metric)
    epoch = _epoch(last)
    message = str(last.get(K.HEALTH_MESSAGE) or "")
    if L.is_stopped(end.outcome):
        # The monitor's message names the diagnosis, where it fired and its evidence.
        return f"{trial_id} stopped: {message or f'{L.diagnosis_of(last)} at epoch {epoch}'}"
    best_part = f", best {_num(best)}" if best is not None and value is not None and best != value else ""
    health = f"  [health: {message}]" if message else ""  # a diagnosis that did not stop it (e.g. overfitting)
    if end.pruned_at is not None:
        return f"{trial_id} pruned at epoch {end.pruned_at} ({metric} {_num(value)}{best_part}){health}"
    ran = f"{metric} {_num(value)} after {_plural(epoch or 0, 'epoch')}{best_part}"
    if L.is_recovered(end.outcome):
        count = int(last[K.HEALTH_RECOVERIES]) if is_number(last.get(K.HEALTH_RECOVERIES)) else 0
        diagnosis = end.outcome.removeprefix(L.RECOVERED)
        return f"{trial_id} completed after recovering from {diagnosis} ({_plural(count, 'rollback')}): {ran}{health}"
    return f"{trial_id} completed: {ran}{health}"


# An exception's own line in a traceback: "RuntimeError: boom", "ray.exceptions.RayTaskError(X): ...".
_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(\([\w.]+\))?(: |$)")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_FAILURE_HEADER = re.compile(r"^Failure # \d+")  # Tune's header of each failure in a trial's error.txt


def one_line_error(text: str) -> str:
    """A trial's error (the traceback text Tune stores) as one line: the innermost exception's type
    and message (a message of several lines joined), cut at :data:`_ERROR_CHARS` characters."""
    lines = [_ANSI.sub("", line).rstrip() for line in text.splitlines()]
    starts = [i for i, line in enumerate(lines) if _FAILURE_HEADER.match(line)]
    lines = lines[starts[-1] + 1 :] if starts else lines  # the latest failure only
    found = [i for i, line in enumerate(lines) if _EXCEPTION_LINE.match(line) and not line.startswith("Traceback")]
    if found:
        tail = [line.strip() for line in lines[found[-1] :] if line.strip()]
    else:
        tail = [line.strip() for line in lines if line.strip()][-1:]
    joined = " ".join(tail) or "unknown error"
    return joined if len(joined) <= _ERROR_CHARS else joined[: _ERROR_CHARS - 3] + "..."


def error_line(
    trial_id: str, error: str, epoch: int | None, *, retry: tuple[int, int] | None = None, details: str | None = None
) -> str:
    """The line of a trial that errored (``retry``: (failure, of max failures), Tune retries it
    from its last checkpoint) or that errored for good; ``details``: where the traceback is."""
    where = f" after epoch {epoch}" if epoch is not None else " before its first epoch"
    if retry is not None:
        failure, limit = retry
        return f"{trial_id} failed{where} ({error}); retrying from its last checkpoint ({failure} of {limit})"
    return f"{trial_id} error{where}: {error}" + (f"  (traceback: {details})" if details else "")


# -- the table -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    """One trial in the progress table."""

    trial_id: str
    status: str
    """``running``, ``pending``, ``paused``, ``ended``, ``error`` or ``interrupted``."""
    epoch: int | None
    value: float | None
    """The search metric as measured at its last report."""
    best: float | None
    """Its best measured value so far."""
    outcome: str
    """How it ended (an outcome of :mod:`hpo.layout`, ``pruned@<epoch>``), or while it runs its
    health monitor's diagnosis."""


_ENDED = ("ended", L.ERROR)  # a Row's statuses of a trial that ended


def _align(rows: Sequence[Sequence[str]], right: Sequence[bool]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return [
        "  ".join(cell.rjust(w) if r else cell.ljust(w) for cell, w, r in zip(row, widths, right, strict=True)).rstrip()
        for row in rows
    ]


def progress_table(rows: Sequence[Row], metric: str, mode: Mode, elapsed_s: float) -> str:
    """The progress table: a header line (time, trials by status and outcome, the best value so
    far), then one row per trial; beyond :data:`MAX_ROWS` rows only the trials not ended and the
    best ended ones, the rest counted."""
    live = Counter(r.status for r in rows if r.status not in _ENDED)
    ended = Counter(r.outcome.split("@")[0] for r in rows if r.status in _ENDED)
    parts = [f"{n} {status}" for status, n in live.items()]
    if ended:
        parts.append(f"{ended.total()} ended (" + ", ".join(f"{n} {o}" for o, n in sorted(ended.items())) + ")")
    minutes, seconds = divmod(int(elapsed_s), 60)
    head = f"== {minutes:02d}:{seconds:02d}  trials: " + ", ".join(parts)
    scored = [r for r in rows if r.best is not None]
    if scored:
        top = scored[0]
        for r in scored[1:]:
            if r.best is not None and top.best is not None and _better(r.best, top.best, mode):
                top = r
        head += f"  best {metric} {_num(top.best)} ({top.trial_id})"

    shown = list(rows)
    if len(rows) > MAX_ROWS:
        running = [r for r in rows if r.status not in _ENDED]
        done = sorted((r for r in rows if r.status in _ENDED and r.best is not None),
                      key=lambda r: -(r.best or 0.0) if mode == "max" else (r.best or 0.0))  # fmt: skip
        keep = {id(r) for r in running + done[: max(0, MAX_ROWS - len(running))]}
        shown = [r for r in rows if id(r) in keep]
    cells = [["id", "status", "epoch", metric, "best", "outcome"]]
    cells += [[r.trial_id, r.status, str(r.epoch) if r.epoch is not None else "-", _num(r.value), _num(r.best), r.outcome]
              for r in shown]  # fmt: skip
    lines = [head, *("  " + line for line in _align(cells, [False, False, True, True, True, False]))]
    if len(shown) < len(rows):
        lines.append(f"  ... and {len(rows) - len(shown)} more ended trials")
    return "\n".join(lines)


# -- the callback ----------------------------------------------------------------------------------

_Hook = TypeVar("_Hook", bound=Callable[..., None])


def _never_raises(hook: _Hook) -> _Hook:
    """A hook of the console never ends the search: a failure to print is logged, and Tune goes on."""

    @functools.wraps(hook)
    def guarded(*args: Any, **kwargs: Any) -> None:
        try:
            hook(*args, **kwargs)
        except Exception:  # noqa: BLE001 - printing progress is not worth a search
            _LOG.warning("the search console failed in %s", hook.__name__, exc_info=True)

    return guarded  # type: ignore[return-value]  # the same signature, wrapped


class SearchConsole(tune.Callback):
    """Prints the search's progress (see the module's doc) from Tune's driver.

    Args:
        metric: the space's search metric (``val/ap``).
        mode: its direction.
        max_epochs: a trial's epochs when it runs to its end (tells completed from pruned).
        every_s: the table at most this often while trials report (:data:`TABLE_EVERY_S`).

    It pickles (``Tuner.restore`` unpickles it from the run config): only plain values are kept,
    and what it tracks (start time, the trials seen) starts afresh in each driver.
    """

    def __init__(self, metric: str, mode: Mode, max_epochs: int, every_s: float | None = None) -> None:
        self.metric = metric
        self.mode: Mode = mode
        self.max_epochs = max_epochs
        self.every_s = TABLE_EVERY_S if every_s is None else every_s
        self._reset()

    def _reset(self) -> None:
        self._start = time.monotonic()
        self._last_table = self._start
        self._changed = False
        self._best: dict[str, float] = {}  # trial id -> its best measured value in this driver
        self._started: set[str] = set()
        self._ended: dict[str, str] = {}  # trial id -> its outcome (the table's column)

    def __getstate__(self) -> dict[str, Any]:
        return {"metric": self.metric, "mode": self.mode, "max_epochs": self.max_epochs, "every_s": self.every_s}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._reset()

    # -- Tune hooks ---------------------------------------------------------------------------------

    @_never_raises
    def setup(self, stop: Any = None, num_samples: int | None = None, total_num_samples: int | None = None, **info: Any) -> None:
        self._reset()  # this driver's start (also after Tuner.restore)

    @_never_raises
    def on_trial_start(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        self._started.add(trial.trial_id)
        self._changed = True

    @_never_raises
    def on_trial_restore(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        self._started.add(trial.trial_id)
        self._changed = True

    @_never_raises
    def on_trial_result(self, iteration: int, trials: list[Trial], trial: Trial, result: dict[str, Any], **info: Any) -> None:
        value = measured_value(result, self.metric)
        if is_finite(value) and abs(value) < L.NONFINITE_FILL:
            best = self._best.get(trial.trial_id)
            if best is None or _better(value, best, self.mode):
                self._best[trial.trial_id] = value
        self._changed = True

    @_never_raises
    def on_trial_complete(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        last = trial.last_result or {}
        self._ended[trial.trial_id] = _outcome(last, self.max_epochs)
        self._changed = True
        print(end_line(trial.trial_id, last, self.metric, self.max_epochs, self._best.get(trial.trial_id)), flush=True)

    @_never_raises
    def on_trial_recover(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        retry = (int(trial.run_metadata.num_failures), int(trial.max_failures))
        print(error_line(trial.trial_id, _error_of(trial), _epoch(trial.last_result or {}), retry=retry), flush=True)

    @_never_raises
    def on_trial_error(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        self._ended[trial.trial_id] = L.ERROR
        self._changed = True
        line = error_line(trial.trial_id, _error_of(trial), _epoch(trial.last_result or {}), details=trial.error_file)
        print(line, flush=True)

    @_never_raises
    def on_step_end(self, iteration: int, trials: list[Trial], **info: Any) -> None:
        since = time.monotonic() - self._last_table
        if (self._changed and since >= self.every_s) or since >= TABLE_QUIET_S:
            self._print_table(trials)

    @_never_raises
    def on_experiment_end(self, trials: list[Trial], **info: Any) -> None:
        self._print_table(trials, final=True)

    # -- the table's rows ---------------------------------------------------------------------------

    def _print_table(self, trials: Sequence[Trial], final: bool = False) -> None:
        rows = [self._row(t, final) for t in trials]
        if rows:
            print(progress_table(rows, self.metric, self.mode, time.monotonic() - self._start), flush=True)
        self._last_table = time.monotonic()
        self._changed = False

    def _row(self, trial: Trial, final: bool) -> Row:
        last = trial.last_result or {}
        value = measured_value(last, self.metric)
        best = self._best.get(trial.trial_id, value)  # a trial that ended before a --resume: its last
        outcome = self._ended.get(trial.trial_id)
        status = str(trial.status).lower()
        if outcome is not None:
            status = L.ERROR if outcome == L.ERROR else "ended"
        elif status == "terminated" and trial.trial_id not in self._started and K.EPOCH in last:
            status, outcome = "ended", _outcome(last, self.max_epochs)  # ended in an earlier driver
        elif status == L.ERROR:
            outcome = L.ERROR
        elif final and (trial.trial_id in self._started or status in ("pending", "paused")):
            status = L.INTERRUPTED  # Ctrl-C: Tune marked it terminated, it never ended (--resume)
        return Row(trial.trial_id, status, _epoch(last), value, best, outcome or (L.diagnosis_of(last) if last else ""))


def _outcome(last: Mapping[str, Any], max_epochs: int) -> str:
    end = L.trial_end(last, max_epochs)
    return end.outcome if end.pruned_at is None else f"{end.outcome}@{end.pruned_at}"


def _error_of(trial: Trial) -> str:
    """The trial's latest error as one line, from the traceback Tune wrote beside its results."""
    path = trial.error_file
    if path is None or not Path(path).is_file():
        return "unknown error (no error file)"
    return one_line_error(Path(path).read_text(errors="replace"))
