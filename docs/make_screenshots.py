"""The README's screenshots, from a real search and a real ``mlflow ui``: ``docs/img/*.png``.

    .venv/bin/python docs/make_screenshots.py [--workdir DIR] [--out docs/img]

It makes:

* ``runs_table.png``: the experiment's runs table in MLflow, one row per trial, sorted by ``val/ap``,
  with the outcome (``hpo.outcome``), ``val/ap`` and the sampled params as columns;
* ``stopped_trial.png``: the run page of the first trial the health monitor stopped (its
  description holds the monitor's evidence);
* ``best_detections.png``: the best trial's ``detections.png`` artifact in MLflow (four validation
  images, ground truth and the detections at the run's operating point, a legend under them);
* ``report.png``: the top of the search's HTML report.

How: it runs the CPU demo search (``hpo/search.py`` with its defaults: 12 trials of ``cpu-demo``,
whose seeded second point diverges) in ``--workdir``, or reuses the finished search already there;
checks that at least one trial completed and one was stopped by the health monitor; serves the
search's MLflow with ``mlflow ui`` on 127.0.0.1 and a free port; and screenshots each page with
headless Chromium. Run time on a 2-core machine: 40-42 s (2026-12-02), 27-36 s (2026-12-03) when it
reuses a finished search; with a new workdir add the search (122-212 s, the README's "The demo's
figures").

Prerequisite: Debian's Chromium, ``apt-get install -y chromium`` (the script looks for
``chromium`` or ``chromium-browser`` on ``PATH``). Pillow (a dependency of the project) shrinks a
screenshot over 400 KB to a 256-colour palette.

Three things about MLflow 3.17's UI that the URLs below work around:

* Columns: the runs table's URL takes only ``searchFilter``, ``orderByKey``, ``orderByAsc``,
  ``startTime``, ``lifecycleFilter``, ``modelVersionFilter`` and ``datasetsFilter``; the chosen
  columns live in the browser's local storage. A *shared view* brings them too: the experiment tag
  ``mlflow.sharedViewState.<key>`` holds the view as JSON (the URL facets plus ``selectedColumns``,
  ``columnOrder``, ``columnWidths``, ``groupBy``, ...; never ``runsExpanded``, ``runsPinned`` or
  ``runsHidden``) and ``?viewStateShareKey=<key>`` opens it (with a "You're viewing a shared view"
  banner). The search writes that tag (``hpo.tracking.share_trials_view``, key ``trials``) and prints
  the URL. The parent run cannot be expanded from a URL, so the view filters to the trials
  (``tags.`hpo.role` = 'trial'``), which the table then lists flat.
* The sidebar: ``?workflowType=machine_learning`` shows the model-training sidebar (Runs, Models)
  instead of the GenAI one, whatever the browser last chose.
* The Assistant: on its first load from a host named ``localhost``, ``127.0.0.1`` or ``::1`` the UI
  opens its Assistant panel over the right third of the page, and a headless browser's every load
  is a first load. So the server listens on 127.0.0.1 but the browser asks for ``mlflow.localhost``
  (Chromium resolves every ``*.localhost`` name to loopback itself, no DNS), a name the server is
  told to accept (``--allowed-hosts``, ``--cors-allowed-origins``).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from mlflow import MlflowClient
from mlflow.entities import Run
from PIL import Image

from hpo import layout as L

REPO = Path(__file__).resolve().parents[1]
DEFAULT_WORKDIR = Path(tempfile.gettempdir()) / "ssd-face-hpo-screenshots"
EXPERIMENT = "cpu-demo"  # the default space's name, the default search's experiment
HOST = "mlflow.localhost"  # loopback, but not a name that opens the Assistant (see above)
WINDOW = (1600, 1100)
MAX_BYTES = 400_000
BUDGET_MS = 15_000  # Chromium's virtual time for the page to load its data and draw


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR, help=f"the search's folder (default: {DEFAULT_WORKDIR})")
    p.add_argument("--out", type=Path, default=REPO / "docs" / "img", help="where the PNGs go (default: docs/img)")
    args = p.parse_args()
    start = time.monotonic()
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        sys.exit("no chromium on PATH: apt-get install -y chromium")
    workdir: Path = args.workdir.resolve()
    report = run_search(workdir)
    db = workdir / "mlflow.db"
    client = MlflowClient(f"sqlite:///{db}")
    experiment, stopped, best = pick_runs(client)
    out: Path = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    port = free_port()
    with MlflowUI(db, port):
        ui = f"http://{HOST}:{port}/#/experiments/{experiment}"
        view = "workflowType=machine_learning"
        shots = [
            ("runs_table.png", L.trials_view_url(f"http://{HOST}:{port}", experiment), WINDOW, 1),
            ("stopped_trial.png", f"{ui}/runs/{stopped.info.run_id}?{view}", WINDOW, 1),
            ("best_detections.png", f"{ui}/runs/{best.info.run_id}/artifacts/detections.png?{view}", (1200, 1000), 1),
            ("report.png", report.as_uri(), WINDOW, 1),
        ]
        for name, url, window, scale in shots:
            screenshot(browser, url, out / name, window, scale)
    print(f"done in {time.monotonic() - start:.0f} s")


def run_search(workdir: Path) -> Path:
    """The HTML report of the finished search in ``workdir``, after running it there if need be."""
    log = workdir / "search.log"
    report = report_of(log)
    if report is not None:
        print(f"reusing the search in {workdir} (report {report})")
        return report
    if log.exists():
        sys.exit(f"{workdir} holds a search that did not finish (see {log}): remove it or pass another --workdir")
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"running the CPU demo search in {workdir} (1-4 minutes; its output goes to {log})")
    with log.open("w") as output:
        done = subprocess.run(
            [sys.executable, str(REPO / "hpo" / "search.py")], cwd=workdir, stdout=output, stderr=subprocess.STDOUT
        )
    report = report_of(log)
    if done.returncode != 0 or report is None:
        sys.exit(f"the search failed (exit {done.returncode}): see {log}")
    return report


def report_of(log: Path) -> Path | None:
    """The report the search's output names (``report:  PATH  (also on ...)``), if it exists."""
    if not log.exists():
        return None
    found = re.search(r"^report:\s+(.+?)\s+\(also", log.read_text(errors="replace"), re.MULTILINE)
    path = Path(log.parent, found.group(1)) if found else None  # the search prints it absolute
    return path if path is not None and path.exists() else None


def pick_runs(client: MlflowClient) -> tuple[str, Run, Run]:
    """The experiment's id, the first trial the health monitor stopped and the best trial."""
    experiment = client.get_experiment_by_name(EXPERIMENT)
    if experiment is None:
        sys.exit(f"no experiment {EXPERIMENT!r} in the search's MLflow")
    ids = [experiment.experiment_id]
    trials = client.search_runs(ids, f"tags.`{L.ROLE}` = '{L.TRIAL}'", order_by=["attributes.start_time ASC"], max_results=1000)
    stopped = [run for run in trials if L.is_stopped(run.data.tags.get(L.OUTCOME, ""))]
    parents = client.search_runs(ids, f"tags.`{L.ROLE}` = '{L.PARENT}'", order_by=["attributes.start_time DESC"], max_results=1)
    best_id = parents[0].data.tags.get(L.BEST_TRIAL) if parents else None
    best = [run for run in trials if run.data.tags.get(L.TRIAL_ID) == best_id]
    outcomes = sorted({run.data.tags.get(L.OUTCOME, L.UNKNOWN) for run in trials})
    if not stopped or not best:
        sys.exit(f"the screenshots need a completed and a stopped trial; this search's outcomes: {', '.join(outcomes)}")
    print(f"{len(trials)} trials ({', '.join(outcomes)}); stopped: {stopped[0].info.run_name}; best: {best[0].info.run_name}")
    return experiment.experiment_id, stopped[0], best[0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class MlflowUI:
    """``mlflow ui`` on 127.0.0.1:``port``, in a process group of its own (it starts workers and
    job consumers), stopped with the group on exit."""

    def __init__(self, db: Path, port: int) -> None:
        mlflow = Path(sys.executable).parent / "mlflow"
        command = [str(mlflow)] if mlflow.exists() else [sys.executable, "-m", "mlflow"]
        origin = f"{HOST}:{port}"
        self.args = [
            *command,
            "ui",
            "--backend-store-uri",
            f"sqlite:///{db}",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
            "--allowed-hosts",
            f"{origin},{HOST}",
            "--cors-allowed-origins",
            f"http://{origin}",
        ]
        self.port = port
        self.log = db.parent / "mlflow-ui.log"

    def __enter__(self) -> MlflowUI:
        with self.log.open("w") as output:
            self.process = subprocess.Popen(self.args, stdout=output, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                sys.exit(f"mlflow ui exited ({self.process.returncode}): see {self.log}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2) as answer:
                    if answer.status == 200:
                        print(f"mlflow ui answers on 127.0.0.1:{self.port}")
                        return self
            except OSError:
                time.sleep(1)
        self.__exit__()
        sys.exit(f"mlflow ui did not answer within 120 s: see {self.log}")

    def __exit__(self, *_: object) -> None:
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=30)  # it stops its workers first: ~5 s
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
        try:  # whatever of the group outlived it
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait()


def screenshot(browser: str, url: str, path: Path, window: tuple[int, int], scale: int) -> None:
    """One headless Chromium screenshot of ``url`` (in a new profile: no view remembered), kept under MAX_BYTES."""
    path.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run(
            [
                browser,
                "--headless=new",
                "--no-sandbox",
                f"--user-data-dir={profile}",
                f"--screenshot={path}",
                f"--window-size={window[0]},{window[1]}",
                f"--force-device-scale-factor={scale}",
                f"--virtual-time-budget={BUDGET_MS}",
                "--hide-scrollbars",
                url,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=180,
            check=False,
        )
    if not path.exists():
        sys.exit(f"chromium wrote no screenshot of {url}")
    if path.stat().st_size > MAX_BYTES:
        with Image.open(path) as image:
            image.convert("RGB").quantize(256, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE).save(
                path, optimize=True
            )
    print(f"{path.name}: {path.stat().st_size // 1000} KB  <- {url}")


if __name__ == "__main__":
    main()
