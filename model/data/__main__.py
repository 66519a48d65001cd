"""Dataset utilities: ``python -m model.data make-mini --out data/wider-mini``."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import cast

from model.config import DEFAULT_MINI_ROOT


def _make_mini(args: argparse.Namespace) -> int:
    from model.data.mini import make_mini

    summary = make_mini(args.out, seed=args.seed, num_train=args.train, num_val=args.val)
    print(summary.format())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m model.data", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    mini = commands.add_parser(
        "make-mini",
        help="generate the mini WIDER FACE set (replaces a previously generated one)",
        description="Generate a small face dataset in the official WIDER FACE layout and annotation format.",
    )
    mini.add_argument("--out", type=Path, default=DEFAULT_MINI_ROOT, help="dataset root (default: %(default)s)")
    mini.add_argument("--seed", type=int, default=0, help="generation seed (default: %(default)s)")
    mini.add_argument("--train", type=int, default=400, help="training images (default: %(default)s)")
    mini.add_argument("--val", type=int, default=100, help="validation images (default: %(default)s)")
    mini.set_defaults(handler=_make_mini)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return cast(int, args.handler(args))  # set_defaults(handler=...): the subcommands return an exit code
    except (ValueError, FileExistsError) as error:
        parser.error(str(error))  # exits with status 2 and the message, not a traceback
    return 1


if __name__ == "__main__":
    raise SystemExit(main())
