"""Checks before a search starts Ray or writes anything: fail in seconds with one line, not later.

Without them a truncated annotation file makes every trial fail three times and the search still
says "finished"; an unreachable tracking server or Ray address hangs for minutes inside MLflow's or
Ray's retries; a second search of the same name silently takes over the first one's folder. Each
check raises :class:`PreflightError` with a one-line message; the search prints it and exits 2.
"""

from __future__ import annotations

import socket
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

from PIL import Image

from hpo import search_record
from model.data.mini import generated_params
from model.widerface_eval import GROUND_TRUTH_PLACES, find_ground_truth
from model.data.widerface import AnnotationError, parse_annotations

#: Seconds each network check may take.
TIMEOUT_S = 5.0
#: Images decoded per split: enough to catch a wrong folder or unreadable files, cheap on 1 TB.
SAMPLE_IMAGES = 8


class PreflightError(RuntimeError):
    """A search cannot start; the message says why in one line."""


def check_tracking(uri: str, timeout: float = TIMEOUT_S) -> None:
    """The MLflow store answers: a server's ``/health`` within ``timeout``; a sqlite file's folder exists."""
    parsed = urlparse(uri)
    if parsed.scheme in ("http", "https"):
        try:
            with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout) as response:
                if response.status == 200:
                    return
                reason = f"HTTP {response.status}"
        except urllib.error.HTTPError as exc:
            reason = f"HTTP {exc.code}"
        except (urllib.error.URLError, OSError) as exc:
            reason = str(getattr(exc, "reason", exc))
        raise PreflightError(f"the MLflow tracking server at {uri} did not answer within {timeout:.0f} s ({reason})")
    if parsed.scheme == "sqlite":
        path = Path(uri.removeprefix("sqlite:///"))
        if not path.parent.is_dir():
            raise PreflightError(f"the MLflow store {uri}: folder {str(path.parent)!r} does not exist")


def check_ray_address(address: str | None, timeout: float = TIMEOUT_S) -> None:
    """A cluster address (``host:port`` or ``ray://host:port``) accepts a connection within ``timeout``.

    ``None`` (a local Ray) and ``auto`` (the head node's own cluster, found by Ray) are not checked.
    """
    if address is None or address == "auto":
        return
    hostport = address.split("://", 1)[-1]
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise PreflightError(f"--address {address!r}: expected host:port, ray://host:port or auto")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as exc:
        raise PreflightError(f"the Ray cluster at {address} could not be reached within {timeout:.0f} s ({exc})") from None


def check_data(root: Path, source: str) -> str:
    """The dataset at ``root`` is usable; returns a one-line description (images per split).

    ``mini``: ``root`` is missing, empty or a generated mini set (it is generated there). ``wider``:
    both annotation files parse completely, their images exist and a sample of each split decodes.
    """
    if source == "mini":
        if root.is_dir() and any(root.iterdir()) and not generated_params(root):
            raise PreflightError(
                f"data.root {str(root)!r} holds files but no generated mini set: point --data at an empty or new "
                "folder for the mini set, or use a space with data.source: wider for real data"
            )
        return f"mini set at {root}"
    counts = []
    for split in ("train", "val"):
        annotations = root / "wider_face_split" / f"wider_face_{split}_bbx_gt.txt"
        if not annotations.is_file():
            raise PreflightError(f"no {split} annotation file at {annotations} (the official WIDER FACE layout)")
        try:
            records, _ = parse_annotations(annotations)
        except AnnotationError as exc:
            raise PreflightError(str(exc)) from None
        images = root / f"WIDER_{split}" / "images"
        present = [r for r in records if (images / r.relpath).is_file()]
        if not present:
            raise PreflightError(f"none of the {len(records)} {split} images of {annotations.name} is under {images}")
        step = max(1, len(present) // SAMPLE_IMAGES)
        for record in present[::step][:SAMPLE_IMAGES]:
            try:
                with Image.open(images / record.relpath) as image:
                    image.verify()
            except Exception as exc:  # noqa: BLE001 - any decoder error means the same thing here
                raise PreflightError(f"{images / record.relpath} does not decode ({type(exc).__name__}: {exc})") from None
        missing = len(records) - len(present)
        counts.append(f"{split} {len(present)} images" + (f" ({missing} missing, skipped)" if missing else ""))
    return ", ".join(counts)


def check_ground_truth(root: Path, source: str) -> None:
    """A space scored on the official WIDER FACE AP (``eval.wider_ap``) has its ``.mat`` ground
    truth under ``root`` (the generated mini set always has it)."""
    if source != "mini" and find_ground_truth(root) is None:
        places = ", ".join(f"{place}/" for place in GROUND_TRUTH_PLACES)
        raise PreflightError(
            f"eval.wider_ap: no official WIDER FACE .mat ground truth under {root} (looked in {places}): put the four "
            "files of eval_tools.zip there, or search on val/ap"
        )


def check_name(name: str) -> None:
    """A search's name is one folder under ``--storage-path``: no separators, no ``..``."""
    if not name or name in (".", "..") or any(sep in name for sep in ("/", "\\")):
        raise PreflightError(f"--name {name!r}: a search's name is one folder name under --storage-path (no '/' or '..')")


def check_stored_search(search_dir: str, resume: bool, tracking_uri: str, experiment: str) -> None:
    """A search of this name is not already in storage, unless ``--resume`` continues it, and then
    with the tracking URI and experiment it was started with (:mod:`hpo.search_record`)."""
    record = search_record.stored(search_dir)
    if record is None:
        return
    if not resume:
        raise PreflightError(
            f"a search is already stored at {search_dir}: continue it with --resume, or start another with --name"
        )
    mismatch = record.mismatch(tracking_uri, experiment)
    if mismatch:
        raise PreflightError(mismatch)


def run_checks(*, name: str, tracking_uri: str, experiment: str, address: str | None, root: Path, source: str,
               search_dir: str, resume: bool, wider_ap: bool = False) -> str:  # fmt: skip
    """All of the above, cheapest first; returns the data's description and the seconds taken."""
    start = time.perf_counter()
    check_name(name)
    check_stored_search(search_dir, resume, tracking_uri, experiment)
    check_ray_address(address)
    check_tracking(tracking_uri)
    data = check_data(root, source)
    if wider_ap:
        check_ground_truth(root, source)
    return f"{data} (checked in {time.perf_counter() - start:.1f} s)"
