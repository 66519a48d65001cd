"""What a search keeps beside Tune's results so that ``--resume`` continues the same record.

``hpo_search.json`` in the search's folder (local, NFS or ``s3://``): the search id (the MLflow
parent run's ``hpo.search_id``, stable across ``--resume``), and the tracking URI and experiment
it writes to. A resume against another store or experiment would split the record (the restored
trials' runs in the old one, a new empty parent in the new one), so it is refused with the
original shown. Searches stored before this file existed have ``hpo_search_id.txt`` (the id
only): they resume with whatever tracking URI is given.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import cast
from urllib.parse import unquote, urlparse

__all__ = ["LEGACY_FILE", "RECORD_FILE", "SearchRecord", "create", "normalise_uri", "stored"]

RECORD_FILE = "hpo_search.json"
LEGACY_FILE = "hpo_search_id.txt"


@dataclass(frozen=True)
class SearchRecord:
    search_id: str
    tracking_uri: str | None  #: normalised (:func:`normalise_uri`); None in a legacy record
    experiment: str | None

    def mismatch(self, tracking_uri: str, experiment: str) -> str | None:
        """What differs from how the search was started (a one-line message), or None."""
        if self.tracking_uri is None:
            return None
        if normalise_uri(tracking_uri) != self.tracking_uri or experiment != self.experiment:
            return (
                f"this search was started with --tracking-uri {self.tracking_uri} --experiment {self.experiment}: "
                "resume it with those (another store or experiment would split its record), or start a new search with --name"
            )
        return None


def normalise_uri(uri: str) -> str:
    """A tracking URI made independent of the working directory (a relative sqlite path made absolute)."""
    parsed = urlparse(uri)
    if parsed.scheme != "sqlite":
        return uri.rstrip("/")
    path = unquote(parsed.path)
    if path in ("", "/", "/:memory:"):
        return uri
    # sqlite:///rel.db -> "/rel.db" (relative to the working directory); sqlite:////abs.db -> "//abs.db".
    return f"sqlite:///{Path(path[1:]).expanduser().resolve()}"


def stored(search_dir: str) -> SearchRecord | None:
    """The record of the search stored at ``search_dir``, or None when there is none."""
    text = _read(f"{search_dir}/{RECORD_FILE}")
    if text is not None:
        data = json.loads(text)
        return SearchRecord(str(data["search_id"]), data.get("tracking_uri"), data.get("experiment"))
    legacy = _read(f"{search_dir}/{LEGACY_FILE}")
    return SearchRecord(legacy.strip(), None, None) if legacy is not None else None


def create(search_dir: str, tracking_uri: str, experiment: str) -> SearchRecord:
    """A new search's record with a fresh id, written to ``search_dir``."""
    record = SearchRecord(uuid.uuid4().hex, normalise_uri(tracking_uri), experiment)
    _write(f"{search_dir}/{RECORD_FILE}", json.dumps(asdict(record), indent=2) + "\n")
    return record


def _read(location: str) -> str | None:
    if "://" not in location:
        path = Path(location)
        return path.read_text() if path.is_file() else None
    import pyarrow.fs as pafs

    fs, path = pafs.FileSystem.from_uri(location)
    try:
        with fs.open_input_stream(path) as f:
            return cast(str, f.read().decode())  # bytes.decode (pyarrow is untyped)
    except (FileNotFoundError, OSError):
        return None


def _write(location: str, text: str) -> None:
    if "://" not in location:
        path = Path(location)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return
    import pyarrow.fs as pafs

    fs, path = pafs.FileSystem.from_uri(location)
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    with fs.open_output_stream(path) as f:
        f.write(text.encode())
