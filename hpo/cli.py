"""``ssd-face-hpo``: the project's commands under one name, installed by ``pip install -e .``.

    ssd-face-hpo search|report|export|train|predict|export-model [ARGS ...]

Each subcommand hands its arguments to the ``main(argv)`` of the module that also runs on its own
(``python hpo/search.py``, ``python -m model.train``, ...), so the two forms take the same flags.
That module is imported only once chosen: ``--help`` and ``report`` load neither torch nor Ray.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Protocol

#: subcommand: (module with ``main(argv)``, what it does)
COMMANDS = {
    "search": ("hpo.search", "run a hyperparameter search (python hpo/search.py)"),
    "report": ("hpo.report", "the HTML report of a finished search (python hpo/report.py)"),
    "export": ("hpo.export", "the best healthy trial as a production config (python hpo/export.py)"),
    "train": ("model.train", "production training from a config (python -m model.train)"),
    "predict": ("model.predict", "official-layout predictions over a split (python -m model.predict)"),
    "export-model": ("model.export_model", "a checkpoint as TorchScript or ONNX (python -m model.export_model)"),
}


class _CommandModule(Protocol):
    """What each module of :data:`COMMANDS` is: one with a ``main(argv)`` that returns the exit status."""

    def main(self, argv: list[str], /) -> int: ...


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in COMMANDS:
        module: _CommandModule = importlib.import_module(COMMANDS[argv[0]][0])
        return module.main(argv[1:])
    parser = argparse.ArgumentParser(
        prog="ssd-face-hpo",
        description="Collapse-aware hyperparameter search for SSD face detectors: the project's commands.",
        epilog="ssd-face-hpo COMMAND --help: the command's flags (the same as its module's own CLI).",
    )
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    for name, (_, summary) in COMMANDS.items():
        commands.add_parser(name, help=summary)
    parser.parse_args(argv)  # no command given, or an unknown one: help or usage, and exit
    return 2


if __name__ == "__main__":
    sys.exit(main())
