"""``ssd-face-hpo``, the installed entry point (``[project.scripts]``): it lists its commands and
hands a command's arguments to that module's own CLI, importing torch only for the commands that
train or predict."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from hpo.cli import COMMANDS

REPO = Path(__file__).resolve().parents[1]
SCRIPT = Path(sys.executable).with_name("ssd-face-hpo")


def run(*args: str) -> subprocess.CompletedProcess[str]:
    assert SCRIPT.is_file(), f"{SCRIPT} is missing: reinstall the package (pip install -e .)"
    return subprocess.run([str(SCRIPT), *args], cwd=REPO, capture_output=True, text=True, timeout=300)


def test_help_lists_every_command() -> None:
    done = run("--help")
    assert done.returncode == 0, done.stderr
    assert set(COMMANDS) == {"search", "report", "export", "train", "predict", "export-model"}
    for name in COMMANDS:
        assert f"    {name}" in done.stdout, done.stdout


def test_a_command_takes_its_modules_flags() -> None:
    done = run("report", "--help")
    assert done.returncode == 0, done.stderr
    assert "usage: python hpo/report.py" in done.stdout and "--experiment" in done.stdout
    done = run("report", "--experiment", "nope", "--tracking-uri", "sqlite:///does-not-exist.db")
    assert done.returncode == 2 and "error: no MLflow database" in done.stderr


def test_unknown_or_missing_command_is_a_usage_error() -> None:
    for args in ((), ("nope",)):
        done = run(*args)
        assert done.returncode == 2 and "usage: ssd-face-hpo" in done.stderr, done.stderr


def test_help_and_report_import_no_torch_or_ray() -> None:
    code = (
        "import sys\nfrom hpo.cli import main\n"
        "for argv in (['--help'], ['report', '--help']):\n"
        "    try:\n        main(argv)\n    except SystemExit:\n        pass\n"
        "assert not {'torch', 'ray'} & set(sys.modules), 'torch or ray imported'\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
