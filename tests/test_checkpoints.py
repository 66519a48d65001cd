"""A search whose driver died while Tune replaced a trial's checkpoint still resumes that trial.

Seen in CI: Tune (``num_to_keep=1``) deletes a trial's checkpoint when it registers the next one
and saves its experiment state a moment later; a driver killed in between left a state naming the
deleted checkpoint, and on ``--resume`` the trial errored ("Could not recover from checkpoint as it
does not exist on storage anymore"). Here the driver kills itself at exactly that moment.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pyarrow.fs as pafs
import pytest
from ray import tune

from hpo.checkpoints import REFILLED_NAME, refill_removed, stored_checkpoints

REPO = Path(__file__).resolve().parents[1]

# One driver: a trial reports epochs 1-3 with a checkpoint each (the trial starts after the first
# checkpoint stored_checkpoints gives, as hpo.trainable's does). "kill": the driver SIGKILLs
# itself once Tune has registered the second checkpoint (deleting the first), before it saves its
# state in that step; "resume": Tune restores the search; "refill-and-resume": refill_removed first.
_DRIVER = textwrap.dedent("""
    import os, signal, sys, tempfile
    from pathlib import Path
    import ray
    from ray import tune
    from hpo.checkpoints import refill_removed, stored_checkpoints

    storage, mode = sys.argv[1], sys.argv[2]

    def trainable(config):
        stored = stored_checkpoints(tune.get_checkpoint(), "last.pt")
        start = int(Path(stored[0].path, "last.pt").read_text()) + 1 if stored else 1
        if start > 3:  # ran to its end before the kill: its last result again, as hpo.trainable does
            tune.report({"epoch": 3})
        for epoch in range(start, 4):
            with open(config["log"], "a") as log:  # every epoch trained, by every run of the trial
                log.write(f"{epoch}\\n")
            with tempfile.TemporaryDirectory() as directory:
                Path(directory, "last.pt").write_text(str(epoch))
                tune.report({"epoch": epoch, "start": start}, checkpoint=tune.Checkpoint.from_directory(directory))

    seen = []

    class SeeCheckpoints(tune.Callback):  # called just before Tune registers one (and deletes the one before)
        def on_checkpoint(self, iteration, trials, trial, checkpoint, **info):
            seen.append(checkpoint.path)

    class KillAfterSecond(tune.Stopper):  # asked in the same step, before Tune saves its state
        def __call__(self, trial_id, result):
            return False

        def stop_all(self):
            if os.environ.get("CKPT_TEST_MODE") == "kill" and any(p.endswith("checkpoint_000001") for p in seen):
                os.kill(os.getpid(), signal.SIGKILL)
            return False

    ray.init(num_cpus=1, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    if mode == "kill":
        tuner = tune.Tuner(trainable, param_space={"log": os.path.join(storage, "trained.txt")}, run_config=tune.RunConfig(
            name="ckpt", storage_path=storage, callbacks=[SeeCheckpoints()], stop=KillAfterSecond(),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1), verbose=0))
    else:
        if mode == "refill-and-resume":
            print("refilled", refill_removed(os.path.join(storage, "ckpt")))
        tuner = tune.Tuner.restore(os.path.join(storage, "ckpt"), trainable=trainable, resume_errored=True)
    results = tuner.fit()
    print("errors", len(results.errors), "last", results[0].metrics.get("epoch"))
""")


def _driver(tmp_path: Path, mode: str) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "driver.py"
    script.write_text(_DRIVER)
    return subprocess.run([sys.executable, str(script), str(tmp_path / "ray"), mode], cwd=REPO, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(REPO), "CKPT_TEST_MODE": mode})  # fmt: skip


@pytest.mark.slow
def test_a_trial_resumes_when_its_named_checkpoint_was_removed(tmp_path: Path) -> None:
    killed = _driver(tmp_path, "kill")
    assert killed.returncode == -9, killed.stderr[-2000:]
    (trial_dir,) = (tmp_path / "ray" / "ckpt").glob("trainable_*")
    stored = sorted(p.name for p in trial_dir.glob("checkpoint_*"))
    assert stored[0] == "checkpoint_000001", stored  # the first deleted (the third may be stored: the trial runs ahead)

    plain = _driver(tmp_path, "resume")  # Tune alone: the state names the deleted checkpoint
    assert "errors 1" in plain.stdout, plain.stdout + plain.stderr[-2000:]
    assert "does not exist on storage anymore" in plain.stdout + plain.stderr

    refilled = _driver(tmp_path, "refill-and-resume")
    assert "refilled 1" in refilled.stdout and "errors 0 last 3" in refilled.stdout, refilled.stdout + refilled.stderr[-2000:]
    trained = (tmp_path / "ray" / "trained.txt").read_text().split()
    assert trained == ["1", "2", "3"]  # Tune's was removed: resumed after the newest stored, no epoch trained twice


def test_tunes_checkpoint_comes_first_then_the_newest_stored(tmp_path: Path) -> None:
    for index, has_file in ((0, True), (1, True), (2, True), (3, False), (12, True)):
        folder = tmp_path / f"checkpoint_{index:06d}"
        folder.mkdir()
        if has_file:
            (folder / "last.pt").write_text(str(index))
    (tmp_path / "checkpoint_tmp").mkdir()  # not Tune's numbering: ignored
    named = tune.Checkpoint(str(tmp_path / "checkpoint_000001"), filesystem=pafs.LocalFileSystem())
    assert [Path(c.path).name for c in stored_checkpoints(named, "last.pt")] == [
        "checkpoint_000001", "checkpoint_000012", "checkpoint_000002", "checkpoint_000000",
    ]  # fmt: skip
    emptied = tune.Checkpoint(str(tmp_path / "checkpoint_000003"), filesystem=pafs.LocalFileSystem())
    assert [Path(c.path).name for c in stored_checkpoints(emptied, "last.pt")] == [
        "checkpoint_000012", "checkpoint_000002", "checkpoint_000001", "checkpoint_000000",
    ]  # fmt: skip
    assert stored_checkpoints(named, "other.pt") == []
    with pytest.warns(UserWarning, match="get_storage"):  # Ray's, outside a trial
        assert stored_checkpoints(None, "last.pt") == []  # outside a trial, no checkpoint named: a fresh start


def test_only_removed_folders_below_a_trials_newest_are_put_back(tmp_path: Path) -> None:
    for name in ("trial_a/checkpoint_000002", "trial_a/checkpoint_000004", "trial_b/checkpoint_000000", "trial_c"):
        (tmp_path / name).mkdir(parents=True)
    (tmp_path / "experiment_state.json").write_text("{}")
    assert refill_removed(str(tmp_path)) == 3
    assert sorted(p.name for p in (tmp_path / "trial_a").iterdir()) == [f"checkpoint_00000{i}" for i in range(5)]
    assert (tmp_path / "trial_a" / "checkpoint_000003" / REFILLED_NAME).is_file()
    assert not (tmp_path / "trial_a" / "checkpoint_000004" / REFILLED_NAME).exists()  # never touched: Tune's own
    assert [p.name for p in (tmp_path / "trial_b").iterdir()] == ["checkpoint_000000"]
    assert not any((tmp_path / "trial_c").iterdir())
    assert refill_removed(str(tmp_path)) == 0  # done once
