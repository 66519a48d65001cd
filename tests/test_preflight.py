"""The search's pre-flight: bad data and unreachable services end it in seconds, with one line, nothing written."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

from hpo import search_record
from hpo.preflight import (
    PreflightError,
    check_data,
    check_ground_truth,
    check_name,
    check_ray_address,
    check_stored_search,
    check_tracking,
)
from hpo.search import main as search_main

#: Well above the checks' own 5 s timeouts: the bound the issue asks for, with room for a loaded machine.
BOUND_S = 15.0


def _wider_copy(mini_root: Path, tmp_path: Path) -> Path:
    """The mini set's files as a plain WIDER-layout folder (no generator marker)."""
    root = tmp_path / "wider"
    for part in ("WIDER_train", "WIDER_val", "wider_face_split"):
        shutil.copytree(mini_root / part, root / part)
    return root


def test_a_truncated_annotation_file_is_named_with_its_line(mini_root: Path, tmp_path: Path) -> None:
    root = _wider_copy(mini_root, tmp_path)
    gt = root / "wider_face_split" / "wider_face_train_bbx_gt.txt"
    lines = gt.read_text().splitlines()
    # Cut inside the last record with faces: its count promises more face lines than remain.
    last_count = max(i for i, line in enumerate(lines) if line.strip().isdigit() and int(line) > 1)
    gt.write_text("\n".join(lines[: last_count + 2]) + "\n")
    with pytest.raises(PreflightError, match=rf"wider_face_train_bbx_gt.txt:{last_count + 1}: truncated record"):
        check_data(root, "wider")
    assert "train" in check_data(_wider_copy(mini_root, tmp_path / "again"), "wider")


def test_an_empty_or_wrong_folder_is_refused_and_nothing_is_written(mini_root: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(PreflightError, match="no train annotation file"):
        check_data(empty, "wider")
    images_elsewhere = _wider_copy(mini_root, tmp_path)
    shutil.rmtree(images_elsewhere / "WIDER_val")
    with pytest.raises(PreflightError, match="none of the .* val images"):
        check_data(images_elsewhere, "wider")
    # A mini space pointed at a folder of real data: refused before ensure_mini locks or writes there.
    before = sorted(p.name for p in images_elsewhere.iterdir())
    with pytest.raises(PreflightError, match="no generated mini set"):
        check_data(images_elsewhere, "mini")
    assert sorted(p.name for p in images_elsewhere.iterdir()) == before
    assert "mini set" in check_data(mini_root, "mini") and "mini set" in check_data(tmp_path / "new", "mini")


def test_a_corrupt_sampled_image_is_named(mini_root: Path, tmp_path: Path) -> None:
    root = _wider_copy(mini_root, tmp_path)
    for image in (root / "WIDER_val" / "images").rglob("*.jpg"):
        image.write_bytes(b"not a jpeg")  # every image: the sample cannot miss them
    with pytest.raises(PreflightError, match="does not decode"):
        check_data(root, "wider")


def test_unreachable_services_fail_fast_with_one_line() -> None:
    for check, target in ((check_tracking, "http://127.0.0.1:1"), (check_ray_address, "127.0.0.1:1")):
        start = time.perf_counter()
        with pytest.raises(PreflightError) as info:
            check(target)
        assert time.perf_counter() - start < BOUND_S
        assert "\n" not in str(info.value) and "127.0.0.1:1" in str(info.value)
    with pytest.raises(PreflightError, match="expected host:port"):
        check_ray_address("nonsense")
    check_ray_address(None)
    check_ray_address("auto")


def test_a_search_name_cannot_leave_the_storage_folder() -> None:
    for bad in ("../x", "a/b", "..", ""):
        with pytest.raises(PreflightError, match="one folder name"):
            check_name(bad)
    check_name("cpu-mini_2")


def test_an_annotation_path_cannot_leave_the_images_folder(mini_root: Path, tmp_path: Path) -> None:
    root = _wider_copy(mini_root, tmp_path)
    gt = root / "wider_face_split" / "wider_face_val_bbx_gt.txt"
    lines = gt.read_text().splitlines()
    lines[0] = "../../secrets/0_x.jpg"
    gt.write_text("\n".join(lines) + "\n")
    with pytest.raises(PreflightError, match=r"wider_face_val_bbx_gt.txt:1: image path .* leaves"):
        check_data(root, "wider")


def test_a_stored_search_is_not_overwritten_without_resume(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    search_record.create(str(tmp_path / "s"), uri, "exp")
    with pytest.raises(PreflightError, match="--resume.*--name"):
        check_stored_search(str(tmp_path / "s"), False, uri, "exp")
    check_stored_search(str(tmp_path / "s"), True, uri, "exp")
    check_stored_search(str(tmp_path / "other"), False, uri, "exp")
    # A search stored before the record had a tracking URI (its id alone) is refused as well.
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / search_record.LEGACY_FILE).write_text("abc")
    with pytest.raises(PreflightError, match="--resume"):
        check_stored_search(str(tmp_path / "old"), False, uri, "exp")
    check_stored_search(str(tmp_path / "old"), True, "http://elsewhere:5000", "other")


def test_resume_with_another_store_or_experiment_is_refused_with_the_original(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    search_record.create(str(tmp_path / "s"), "sqlite:///mlflow.db", "exp")  # relative: made absolute
    check_stored_search(str(tmp_path / "s"), True, f"sqlite:///{tmp_path / 'mlflow.db'}", "exp")
    original = f"--tracking-uri sqlite:///{tmp_path / 'mlflow.db'} --experiment exp"
    for uri, experiment in (("http://127.0.0.1:5000", "exp"), ("sqlite:///mlflow.db", "other")):
        with pytest.raises(PreflightError, match=original) as caught:
            check_stored_search(str(tmp_path / "s"), True, uri, experiment)
        assert "\n" not in str(caught.value)
    monkeypatch.chdir(tmp_path / "s")  # the same relative URI from elsewhere is another store
    with pytest.raises(PreflightError, match="split"):
        check_stored_search(str(tmp_path / "s"), True, "sqlite:///mlflow.db", "exp")


def test_the_search_exits_2_before_ray_starts_and_writes_nothing(mini_root: Path, tmp_path: Path, capsys) -> None:
    storage, db = tmp_path / "ray", tmp_path / "mlflow.db"
    base = ["--data", str(mini_root), "--storage-path", str(storage), "--tracking-uri", f"sqlite:///{db}", "--no-report"]
    for extra, message in ((["--address", "127.0.0.1:1"], "could not be reached"),
                           (["--tracking-uri", "http://127.0.0.1:1"], "did not answer")):  # fmt: skip
        start = time.perf_counter()
        assert search_main([*base, *extra]) == 2
        assert time.perf_counter() - start < BOUND_S
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0]
    assert not storage.exists() and not db.exists()


def test_a_space_scored_on_the_official_ap_needs_its_ground_truth(mini_root: Path, tmp_path: Path) -> None:
    root = _wider_copy(mini_root, tmp_path)
    check_ground_truth(root, "wider")  # the mini set's .mat files came along
    for mat in (root / "wider_face_split").glob("*.mat"):
        mat.unlink()
    with pytest.raises(
        PreflightError, match=r"^eval.wider_ap: no official WIDER FACE .mat ground truth under .*wider_face_split/"
    ):
        check_ground_truth(root, "wider")
    check_ground_truth(tmp_path / "not-generated-yet", "mini")  # generated with its ground truth
