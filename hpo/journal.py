"""A durable local journal of the tracking writes MLflow did not acknowledge.

When the tracking server is down, a search goes on training; what it could not write to MLflow
waits here, one JSON object per line, appended and fsync'ed before the search moves on, until the
server answers again (the tracking callback replays it, in order) or until ``--resume`` replays
it. Every write the journal holds is idempotent (runs are found again by their tags, MLflow
ignores a metric logged twice with the same timestamp, tags and artifacts overwrite), so a write
that did reach the server before the connection broke may be replayed safely.

A line torn by a crash mid-append (the last one) is skipped with a warning: the write it held is
lost from the journal, not from the search (``--resume`` reconciles MLflow with Tune's results).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["JOURNAL_FILE", "TrackingJournal"]

_LOG = logging.getLogger(__name__)

#: The journal's file name in a local search folder.
JOURNAL_FILE = "mlflow_journal.jsonl"


class TrackingJournal:
    """Entries (JSON objects) appended durably to ``path``; read back in order; rewritten or removed."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def append(self, entry: dict[str, Any]) -> None:
        line = json.dumps(entry, default=_plain) + "\n"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())

    def entries(self) -> list[dict[str, Any]]:
        if not self.path.is_file():
            return []
        out = []
        for number, line in enumerate(self.path.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                _LOG.warning("%s line %d is not a complete entry (torn by a crash?): skipped", self.path, number)
        return out

    def replace(self, entries: Sequence[dict[str, Any]]) -> None:
        """Keep only ``entries`` (atomically); none: remove the file."""
        if not entries:
            self.path.unlink(missing_ok=True)
            return
        tmp = self.path.with_suffix(".tmp")
        with tmp.open("w", encoding="utf-8") as f:
            f.writelines(json.dumps(entry, default=_plain) + "\n" for entry in entries)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)

    def __len__(self) -> int:
        return len(self.entries())


def _plain(value: Any) -> Any:
    """JSON for what a Tune result may hold besides plain types (numpy scalars, paths)."""
    item = getattr(value, "item", None)
    if callable(item):
        try:
            return item()
        except (TypeError, ValueError):
            pass
    return str(value)
