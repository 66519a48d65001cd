"""A trial's stored Tune checkpoints: which one it resumes from, and the folders Tune removed.

Tune keeps one checkpoint per trial (``CheckpointConfig(num_to_keep=1)``): registering a trial's
new checkpoint deletes the one before, and Tune saves its experiment state (which checkpoint each
trial restores from) a moment later. A driver killed in between leaves a state naming a deleted
checkpoint, and on ``--resume`` Tune refuses to restore that trial ("Could not recover from
checkpoint as it does not exist on storage anymore"): it errors (seen in CI, a driver killed right
after a trial's last epoch).

So before a search resumes, :func:`refill_removed` puts back, empty but for a marker, every
checkpoint folder Tune removed below a trial's newest (Tune numbers a trial's checkpoints one by
one, and the state never names one above the newest stored), and a resuming trial tries its
stored checkpoints that hold their files in :func:`stored_checkpoints`'s order: Tune's own first
(a newer stored epoch never reached Tune or MLflow, so it is trained again and the record stays
whole), the others newest first (Tune's was removed, or its file is unreadable).
"""

from __future__ import annotations

import logging
from typing import cast

import pyarrow.fs as pafs
from ray import tune

__all__ = ["REFILLED_NAME", "refill_removed", "stored_checkpoints"]

_LOG = logging.getLogger(__name__)

#: In a checkpoint folder put back empty by :func:`refill_removed`: why it is there.
REFILLED_NAME = "removed_by_tune.txt"
_PREFIX = "checkpoint_"


def _index(name: str) -> int | None:
    """Tune's checkpoint number from its folder name (``checkpoint_000002`` -> 2)."""
    digits = name.removeprefix(_PREFIX)
    return int(digits) if name.startswith(_PREFIX) and digits.isdigit() else None


def _numbered(fs: pafs.FileSystem, trial_dir: str) -> list[tuple[int, str]]:
    """(number, path) of every checkpoint folder in a trial's folder."""
    found = fs.get_file_info(pafs.FileSelector(trial_dir, allow_not_found=True))
    return [
        (index, info.path)
        for info in found
        if info.type == pafs.FileType.Directory and (index := _index(info.base_name)) is not None
    ]


def refill_removed(search_dir: str) -> int:
    """Put back, empty but for :data:`REFILLED_NAME`, each checkpoint folder Tune removed below
    the newest of its trial, in a stored search's folder (local or remote); returns how many."""
    fs, root = pafs.FileSystem.from_uri(search_dir) if "://" in search_dir else (pafs.LocalFileSystem(), search_dir)
    refilled = 0
    for trial in fs.get_file_info(pafs.FileSelector(root, allow_not_found=True)):
        if trial.type != pafs.FileType.Directory:
            continue
        present = {index for index, _ in _numbered(fs, trial.path)}
        for index in set(range(max(present, default=-1))) - present:
            path = f"{trial.path}/{_PREFIX}{index:06d}"
            fs.create_dir(path)
            with fs.open_output_stream(f"{path}/{REFILLED_NAME}") as out:
                out.write(
                    b"Tune removed this checkpoint for a newer one; put back empty so that a saved state naming it resumes\n"
                )
            refilled += 1
    if refilled:
        _LOG.info("%d checkpoint folder(s) Tune removed put back empty in %s", refilled, search_dir)
    return refilled


def stored_checkpoints(given: tune.Checkpoint | None, required: str) -> list[tune.Checkpoint]:
    """The trial's stored checkpoints that hold ``required`` (its checkpoint file), in the order
    to resume from: ``given`` (Tune's) first, then the others newest first.

    Call it inside a trial with ``tune.get_checkpoint()``: it lists the trial's folder in storage,
    since Tune's saved state may name an older checkpoint than the newest stored (one
    Tune removed, see :func:`refill_removed`), or none at all (a driver killed before it saved the
    state that knew the trial's first). Empty for a fresh start."""
    try:
        if given is not None:
            fs = cast("pafs.FileSystem", given.filesystem)
            trial_dir = given.path.rstrip("/").rsplit("/", 1)[0]
        else:
            storage = tune.get_context().get_storage()  # Ray's developer API: the trial's folder
            if storage is None:  # not inside a trial
                return []
            fs, trial_dir = storage.storage_filesystem, storage.trial_fs_path
        stored = _numbered(fs, trial_dir)
    except Exception as exc:  # noqa: BLE001 - without the listing, Tune's checkpoint alone decides
        _LOG.warning("the trial's stored checkpoints could not be listed: %s: %s", type(exc).__name__, exc)
        if given is None:
            return []
        fs, stored = cast("pafs.FileSystem", given.filesystem), [(0, given.path)]
    usable = [(index, path) for index, path in stored if fs.get_file_info(f"{path}/{required}").type == pafs.FileType.File]
    usable.sort(key=lambda item: (given is None or item[1] != given.path, -item[0]))
    return [tune.Checkpoint(path, filesystem=fs) for _, path in usable]
