"""The machine a benchmark ran on, recorded beside its figures (every figure names its machine)."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Any

import torch


def cpu_model() -> str:
    """The CPU's model name from ``/proc/cpuinfo`` (Linux), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_average() -> list[float]:
    """The 1, 5 and 15 minute load averages (empty where the OS has none): how shared the machine was."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def machine_info(**extra: Any) -> dict[str, Any]:
    """CPU, cores, platform, Python, torch and its thread count, the load average now
    (``load_average_at_start``), plus ``extra`` (library versions, the device)."""
    return {
        "cpu": cpu_model(),
        "cpu_cores": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        **extra,
        "load_average_at_start": load_average(),
    }


def machine_line(m: dict[str, Any]) -> str:
    """The results' "Machine:" line of a benchmark that runs searches (load at start and end, Ray)."""
    return (
        f"Machine: {m['cpu']}, {m['cpu_cores']} cores (shared), load average at start "
        f"{', '.join(map(str, m['load_average_at_start']))}, at end {', '.join(map(str, m.get('load_average_at_end', [])))}; "
        f"Python {m['python']}, torch {m['torch']}, Ray {m['ray']}."
    )


def write_results(folder: Path, stem: str, results: dict[str, Any], markdown: str) -> None:
    """``<folder>/<stem>.json`` and ``.md``, and the markdown on stdout."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{stem}.json").write_text(json.dumps(results, indent=1))
    (folder / f"{stem}.md").write_text(markdown)
    print(markdown)


def publish(args: Any, results: dict[str, Any], markdown: str) -> None:
    """A benchmark's end: with ``args.smoke`` (a check of the script) the markdown on stdout only,
    else :func:`write_results` into ``args.out`` as ``args.stem``."""
    if args.smoke:
        print(markdown)
    else:
        write_results(args.out, args.stem, results, markdown)
