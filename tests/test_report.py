"""``hpo/report.py`` and ``hpo/plots.py``: a report built from a small real search (Ray Tune, Optuna,
MLflow on SQLite, the trainer on the mini set), and the figures and importances on hand-built data."""

import random
import re
from html.parser import HTMLParser
from pathlib import Path

import mlflow
import pytest
import yaml
from matplotlib.figure import Figure
from optuna.distributions import FloatDistribution

from hpo import layout as L
from hpo import plots
from hpo.report import ReportError, TrialRecord, build_report, load_search, param_importances, search_distributions
from hpo.report import main as report_main
from hpo.search import main as search_main
from hpo.space import load_space
from hpo.stages import read_stages
from hpo.tracking import open_parent_run
from model import report_keys as K

DIVERGING = {"optim.lr": 5.0, "schedule.warmup_epochs": 0.0, "loss.box_weight": 1.0, "loss.class_weight": 1.0}
HEALTHY = {"optim.lr": 0.01, "schedule.warmup_epochs": 0.5, "loss.box_weight": 1.0, "loss.class_weight": 1.0}
SECTIONS = ("outcomes", "why", "best-trials", "learning-curves", "failure-atlas", "importances", "trials")


class Page(HTMLParser):
    """What a report page shows, markup aside: its sections' text and table rows, images, links."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.title = ""
        self.tags: list[str] = []
        self.sections: dict[str, dict] = {}
        self.images: list[tuple[str, str]] = []
        self.links: list[str] = []
        self._section: dict | None = None
        self._cell: list[str] | None = None
        self._in_title = False
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        self.tags.append(tag)
        self._in_title = tag == "title"
        if tag == "section":
            self._section = self.sections[a["id"]] = {"text": "", "rows": []}
        elif tag == "tr" and self._section is not None:
            self._section["rows"].append([])
        elif tag in ("td", "th"):
            self._cell = []
        elif tag == "img":
            self.images.append((a["alt"], a["src"]))
        elif tag == "a":
            self.links.append(a["href"])

    def handle_endtag(self, tag: str) -> None:
        self._in_title = False
        if tag == "section":
            self._section = None
        elif tag == "td" and self._section is not None:
            self._section["rows"][-1].append("".join(self._cell))
        if tag in ("td", "th"):
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.title += data
        if self._cell is not None:
            self._cell.append(data)
        if self._section is not None:
            self._section["text"] += data

    def rows(self, section: str) -> list[list[str]]:
        """The section's table rows with data cells (header rows have none)."""
        return [r for r in self.sections[section]["rows"] if r]


def _space_file(tmp_path: Path) -> Path:
    raw = load_space("cpu-mini").as_dict()
    raw.update(
        name="report-e2e",
        budget={"num_samples": 3, "max_epochs": 2, "max_concurrent_trials": 2, "time_budget_s": None},
        scheduler={"type": "asha", "grace_period": 1, "reduction_factor": 2, "brackets": 1},
        params={
            "optim.lr": {"distribution": "loguniform", "low": 1e-3, "high": 10.0},
            "schedule.warmup_epochs": {"distribution": "uniform", "low": 0.0, "high": 1.0},
            "loss.box_weight": {"distribution": "loguniform", "low": 0.1, "high": 10.0},
            "loss.class_weight": {"distribution": "loguniform", "low": 0.1, "high": 10.0},
        },
        points_to_evaluate=[DIVERGING, HEALTHY],
    )
    raw["sampler"]["n_startup_trials"] = 4
    raw["fixed"].update(
        {
            "data.max_train_images": 32,
            "data.max_val_images": 16,
            "model.input_size": 128,
            "batch_size": 8,
            "health.check_every_steps": 2,
        }
    )
    path = tmp_path / "report-e2e.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def finished_search(mini_root: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The tracking URI of a finished 3-trial search (one diverging point) in experiment report-e2e."""
    tmp = tmp_path_factory.mktemp("report-search")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    args = ["--space", str(_space_file(tmp)), "--data", str(mini_root), "--storage-path", str(tmp / "ray"), "--tracking-uri", uri]
    assert search_main(args) == 0
    return uri


# -- end to end ------------------------------------------------------------------------------------


@pytest.mark.slow
def test_report_of_a_real_search(finished_search: str, tmp_path: Path, capsys) -> None:
    out = tmp_path / "report"
    assert report_main(["--experiment", "report-e2e", "--tracking-uri", finished_search, "--out", str(out)]) == 0
    assert "report of search" in capsys.readouterr().out
    html = (out / "report.html").read_text()
    page = Page(html)

    assert set(SECTIONS) <= set(page.sections)
    # A sampled param's column header may wrap after its dots (seven of them overflowed 1600 px).
    assert "<th>optim.<wbr>lr</th>" in html
    # Self-contained: every image inline, nothing fetched.
    assert all(src.startswith("data:image/png;base64,") and len(src) > 500 for _, src in page.images)
    assert {"failure atlas", "learning curves of all trials"} <= {alt for alt, _ in page.images}
    assert all(link.startswith("#") for link in page.links)
    assert {p.name for p in out.glob("*.png")} >= {"atlas.png", "curves_all.png"}

    search = load_search(finished_search, "report-e2e")
    assert len(search.trials) == 3
    outcomes = {t.params["optim.lr"]: t.outcome for t in search.trials}
    assert outcomes[5.0] == "stopped:diverged"
    # Why it stopped: the monitor's evidence, read back from its run (the loss against its reference).
    diverged = next(t for t in search.trials if t.params["optim.lr"] == 5.0)
    assert [diverged.trial_id, "stopped:diverged"] in [r[:2] for r in page.rows("why")]
    why = {r[0]: r[3] for r in page.rows("why")}
    assert re.match(r"diverged at step \d+ \(epoch \d\): .*loss", why[diverged.trial_id]), why
    # The all-trials table: id, outcome, diagnosis in one row.
    assert sorted(r[:3] for r in page.rows("trials")) == sorted([t.trial_id, t.outcome, t.diagnosis] for t in search.trials)
    assert "curves_stopped_diverged.png" in {p.name for p in out.glob("*.png")}  # the diverged example's curves

    client = mlflow.MlflowClient(finished_search)
    logged = {Path(a.path).name for a in client.list_artifacts(search.parent_run_id, "report")}
    assert logged == {"report.html", *(p.name for p in out.glob("*.png"))}


@pytest.mark.slow
def test_report_of_a_grid_sweep_shows_every_setting(mini_root: Path, tmp_path: Path) -> None:
    """The seed study's sweep, shrunk: two box weights on the grid sampler, read setting by setting."""
    raw = load_space("seed-study-sweep").as_dict()
    raw.update(name="sweep-e2e", params={"loss.box_weight": {"distribution": "grid", "values": [0.01, 10.0]}})
    raw["budget"].update(max_epochs=2)
    raw["fixed"].update({"data.max_train_images": 32, "data.max_val_images": 16, "model.input_size": 128})
    space = tmp_path / "sweep-e2e.yaml"
    space.write_text(yaml.safe_dump(raw, sort_keys=False))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = ["--space", str(space), "--data", str(mini_root), "--storage-path", str(tmp_path / "ray"), "--tracking-uri", uri]
    assert search_main([*args, "--no-report"]) == 0

    result = build_report(uri, "sweep-e2e", tmp_path / "report", log_to_parent=False)
    page = Page(result.html.read_text())
    assert "sweep" in page.sections and "#sweep" in page.links
    assert {"sweep_curves.png", "sweep_summary.png"} <= {p.name for p in result.images}
    rows = page.rows("sweep")
    assert [r[0] for r in rows] == ["box_weight=0.01", "box_weight=10"]  # grid order
    for setting, outcome, epochs, _best, _last, avoidance, fp_growth, overfitting, monitor in rows:
        trial = next(t for t in result.search.trials if f"box_weight={t.params['loss.box_weight']:g}" == setting)
        assert (outcome, int(epochs)) == (trial.outcome, trial.epochs)
        # val/fp and val/num_images are logged, so false positives per image can be read back.
        assert len(trial.history["val/num_images"]) == trial.epochs == 2
        stages = {s.name: f"epochs {s.span}: {s.detail}" for s in read_stages(trial.history)}
        assert [avoidance, fp_growth, overfitting] == [stages.get(n, "–") for n in ("avoidance", "fp-growth", "overfitting")]
        assert monitor == "healthy" or "(epoch" in monitor


@pytest.mark.slow
def test_a_non_grid_search_has_no_sweep_section(finished_search: str, tmp_path: Path) -> None:
    page = Page(build_report(finished_search, "report-e2e", tmp_path, log_to_parent=False).html.read_text())
    assert "sweep" not in page.sections and "#sweep" not in page.links


@pytest.mark.slow
def test_report_errors_name_what_is_missing(finished_search: str, tmp_path: Path, capsys) -> None:
    with pytest.raises(ReportError, match=r"no MLflow experiment 'nope'.*report-e2e"):
        build_report(finished_search, "nope", tmp_path)
    with pytest.raises(ReportError, match="has no search 'abc123'"):
        build_report(finished_search, "report-e2e", tmp_path, search_id="abc123")
    assert report_main(["--experiment", "nope", "--tracking-uri", finished_search]) == 2
    assert "error: no MLflow experiment 'nope'" in capsys.readouterr().err


def test_report_errors_without_a_search_or_trials(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with pytest.raises(ReportError, match="no MLflow database"):
        build_report(f"sqlite:///{tmp_path / 'missing.db'}", "x", tmp_path)
    client = mlflow.MlflowClient(uri)
    client.create_experiment("empty")
    with pytest.raises(ReportError, match="no parent run"):
        build_report(uri, "empty", tmp_path)
    open_parent_run(uri, "no-trials", "s1", load_space("cpu-mini"))
    with pytest.raises(ReportError, match="search s1 .* has no trial runs"):
        build_report(uri, "no-trials", tmp_path)


def test_report_escapes_what_mlflow_holds(tmp_path: Path) -> None:
    """Names from MLflow are text on the page, never markup: a search of two hand-logged trials."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    experiment = "<script>alert('x')</script> & co"
    open_parent_run(uri, experiment, "s1", load_space("cpu-mini"))
    client = mlflow.MlflowClient(uri)
    exp_id = client.get_experiment_by_name(experiment).experiment_id
    for i, (outcome, diagnosis) in enumerate([(L.COMPLETED, L.HEALTHY), (L.stopped("diverged"), "diverged")]):
        tags = {L.ROLE: L.TRIAL, L.SEARCH_ID: "s1", L.TRIAL_ID: f"t{i}<b>", L.OUTCOME: outcome, L.DIAGNOSIS: diagnosis}
        if diagnosis != L.HEALTHY:
            tags[L.HEALTH_MESSAGE] = "loss explosion: loss 3e+04 > 100 x <blink>its</blink> early median 2"
        run_id = client.create_run(exp_id, tags=tags).info.run_id
        client.log_param(run_id, "optim.lr", 0.01 * (i + 1))
        for epoch in (1, 2):
            client.log_metric(run_id, K.VAL_AP, 0.1 * epoch, step=epoch)
    result = build_report(uri, experiment, tmp_path / "report", log_to_parent=False)
    page = Page(result.html.read_text())
    assert page.title == f"Search report: {experiment}"
    assert "script" not in page.tags and "b" not in page.tags
    assert sorted(r[:3] for r in page.rows("trials")) == [
        ["t0<b>", "completed", "healthy"],
        ["t1<b>", "stopped:diverged", "diverged"],
    ]
    assert [r[0] for r in page.rows("outcomes")] == ["healthy", "stopped:diverged"]
    assert page.rows("why") == [
        ["t1<b>", "stopped:diverged", "2", "loss explosion: loss 3e+04 > 100 x <blink>its</blink> early median 2"]
    ]
    assert "blink" not in page.tags
    assert "Not computed: too few trials to rank parameters" in page.sections["importances"]["text"]


def test_report_marks_a_recovered_trial(tmp_path: Path) -> None:
    """A recovered trial (rolled back from a divergence, then healthy) has its own outcome, shade,
    marker and legend entry, and competes among the best trials with its measured value."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    open_parent_run(uri, "rec", "s1", load_space("cpu-mini"))
    client = mlflow.MlflowClient(uri)
    exp_id = client.get_experiment_by_name("rec").experiment_id
    trials = [  # (trial id, outcome, diagnosis, lr, last val/ap or None)
        ("t_ok", L.COMPLETED, L.HEALTHY, 0.01, 0.3),
        ("t_div", L.stopped("diverged"), "diverged", 0.9, None),
        ("t_rec", L.recovered("diverged"), L.HEALTHY, 0.5, 0.4),  # measured after lr x0.01
    ]
    for trial_id, outcome, diagnosis, lr, ap in trials:
        tags = {L.ROLE: L.TRIAL, L.SEARCH_ID: "s1", L.TRIAL_ID: trial_id, L.OUTCOME: outcome, L.DIAGNOSIS: diagnosis}
        run_id = client.create_run(exp_id, tags=tags).info.run_id
        for key, value in {
            "optim.lr": lr,
            "schedule.warmup_epochs": 0.0,
            "loss.box_weight": 1.0,
            "loss.class_weight": 1.0,
        }.items():
            client.log_param(run_id, key, value)
        for epoch in (1, 2):
            client.log_metric(run_id, K.TRAIN_LOSS, 3.0 / epoch, step=epoch)
            if ap is not None:
                client.log_metric(run_id, K.VAL_AP, ap * epoch / 2, step=epoch)
    result = build_report(uri, "rec", tmp_path / "report", log_to_parent=False)
    html = result.html.read_text()
    page = Page(html)

    rec = next(t for t in result.search.trials if t.trial_id == "t_rec")
    assert rec.category == "recovered:diverged" and rec.recovered_from == "diverged" and rec.failed and rec.exportable
    assert [r[0] for r in page.rows("outcomes")] == ["healthy", "recovered:diverged", "stopped:diverged"]
    assert f'<span class="dot diamond" style="background:{plots.category_color("recovered:diverged")}">' in html
    assert "3 trials; 2 failed (stopped by the health monitor, recovered from a failure" in page.sections["outcomes"]["text"]
    # The best trials are those the export chooses from: the recovered one first, said so.
    assert [r[:3] for r in page.rows("best-trials")] == [["1", "t_rec", "recovered:diverged"], ["2", "t_ok", "completed"]]
    assert "Diamonds: recovered trials (recovered:diverged)" in page.sections["failure-atlas"]["text"]
    curves = page.sections["learning-curves"]["text"]
    assert curves.count("best trial: t_rec") == 1 and "example of stopped:diverged: t_div" in curves  # not shown twice
    assert ["t_rec", "recovered:diverged", "healthy"] in [r[:3] for r in page.rows("trials")]


def test_report_reads_the_optuna_study_from_its_storage(tmp_path: Path) -> None:
    """A search's Optuna study in a real RDB storage (sqlite) that the parent names: the report
    takes the trials' params from it (here the runs log none, so only the study has them), shows
    it, and works from the runs alone when the storage is gone."""
    import optuna

    space = load_space("cpu-mini")
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = optuna.create_study(storage=storage, study_name="faces", direction="maximize")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    open_parent_run(uri, "faces", "s1", space, tags={L.OPTUNA_STORAGE: storage, L.OPTUNA_STUDY: "faces"})
    client = mlflow.MlflowClient(uri)
    exp_id = client.get_experiment_by_name("faces").experiment_id
    for i, lr in enumerate([0.002, 0.005, 0.01, 0.02, 0.04, 0.2, 0.5, 0.9]):
        params = {"optim.lr": lr, "schedule.warmup_epochs": 0.2 * (i % 3), "loss.class_weight": 1.0 + i % 2,
                  "loss.box_weight": 0.5 + i % 4, "loss.neg_pos_ratio": 1 + i, "loss.box_loss": ("smooth_l1", "giou")[i % 2]}  # fmt: skip
        failed = lr > 0.1  # failure decided by the learning rate
        study.add_trial(
            optuna.trial.create_trial(params=params, distributions=space.optuna_distributions(),
                                      value=L.PENALTY_MAX if failed else 0.1 + 0.01 * i, user_attrs={L.TRIAL_ID: f"t{i}"})
        )  # fmt: skip
        outcome, diagnosis = (L.stopped("diverged"), "diverged") if failed else (L.COMPLETED, L.HEALTHY)
        tags = {L.ROLE: L.TRIAL, L.SEARCH_ID: "s1", L.TRIAL_ID: f"t{i}", L.OUTCOME: outcome, L.DIAGNOSIS: diagnosis}
        run_id = client.create_run(exp_id, tags=tags).info.run_id
        client.log_metric(run_id, K.VAL_AP, L.PENALTY_MAX if failed else 0.1 + 0.01 * i, step=1)
    study.ask()  # one asked and never told: RUNNING, not a trial of the runs

    result = build_report(uri, "faces", tmp_path / "report", log_to_parent=False)
    stored = result.search.study
    assert stored is not None and stored.storage == storage and stored.name == "faces"
    assert sorted(stored.trials) == [f"t{i}" for i in range(8)] and stored.states == {"COMPLETE": 8, "RUNNING": 1}
    html = result.html.read_text()
    assert f"faces in {storage} (8 COMPLETE, 1 RUNNING); open it with optuna-dashboard {storage}" in html
    text = Page(html).sections["importances"]["text"]
    # Both rankings computed, from the study's params (the runs have none).
    assert "params of 5 trials as Optuna sampled them" in text and "params of 8 trials as Optuna sampled them" in text, text
    assert "Not computed" not in text

    (tmp_path / "optuna.db").unlink()  # the search ran elsewhere: the report falls back to the runs
    result = build_report(uri, "faces", tmp_path / "report2", log_to_parent=False)
    assert result.search.study is None and "not on this machine" in result.search.study_note
    assert not (tmp_path / "optuna.db").exists()  # not created by looking
    assert "too few trials to rank parameters: 0" in Page(result.html.read_text()).sections["importances"]["text"]


def test_the_atlas_draws_a_recovered_trial_as_a_diamond_with_its_own_legend_entry() -> None:
    values = {"loss.box_weight": 1.0, "loss.class_weight": 2.0}
    points = [
        plots.AtlasPoint("a", "healthy", values),
        plots.AtlasPoint("b", "stopped:diverged", {**values, "loss.box_weight": 5.0}),
        plots.AtlasPoint("c", "recovered:diverged", {**values, "loss.box_weight": 3.0}),
        plots.AtlasPoint("d", "recovered:diverged", {"loss.box_weight": 4.0}),  # no class weight: on the edge
    ]
    fig = plots.failure_atlas(points, [("loss.box_weight", "loss.class_weight")])
    legend = fig.legends[0]
    labels = [t.get_text() for t in legend.get_texts()]
    assert labels[:3] == ["healthy (1)", "recovered:diverged (2)", "stopped:diverged (1)"]
    markers = {label: handle.get_marker() for label, handle in zip(labels, legend.legend_handles)}
    assert markers["recovered:diverged (2)"] == "D" and markers["healthy (1)"] == markers["stopped:diverged (1)"] == "o"
    colours = {plots.category_color(c) for c in ("healthy", "stopped:diverged", "recovered:diverged", "recovered:stalled")}
    assert len(colours) == 4  # its own shade, per diagnosis recovered from
    (ax,) = [ax for ax in fig.axes if ax.get_visible()]
    # One collection per category drawn, plus the recovered trial without a class weight on the edge.
    assert len(ax.collections) == 4
    assert plots.category_marker("recovered:unknown") == "D" and plots.category_marker("completed:fp-surge") == "o"
    assert plots.category_order(["pruned", "recovered:stalled", "healthy", "completed:overfitting"]) == [
        "healthy", "completed:overfitting", "recovered:stalled", "pruned"
    ]  # fmt: skip


# -- importances -----------------------------------------------------------------------------------


def _trials(n: int, fails: callable, seed: int = 0) -> list[TrialRecord]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        params = {"a": rng.uniform(0, 1), "b": rng.uniform(0, 1), "c": rng.uniform(0, 1)}
        failed = fails(params)
        outcome = "stopped:diverged" if failed else "completed"
        out.append(
            TrialRecord(
                f"t{i}", f"r{i}", outcome, "diverged" if failed else "healthy", params, {}, None if failed else params["b"]
            )
        )
    return out


DISTS = {k: FloatDistribution(0, 1) for k in "abc"}


def test_failure_importance_finds_the_param_that_decides_failure() -> None:
    trials = _trials(40, lambda p: p["a"] > 0.6)
    importances, note = param_importances(trials, DISTS, lambda t: float(t.failed), "maximize", binary=True)
    assert importances is not None, note
    assert max(importances, key=importances.get) == "a" and importances["a"] > 0.6, importances
    # The metric among the working trials is b itself: b decides it.
    importances, note = param_importances(trials, DISTS, lambda t: t.value, "maximize")
    assert importances is not None and max(importances, key=importances.get) == "b", (importances, note)


def test_importances_say_why_they_are_missing() -> None:
    assert param_importances(_trials(3, lambda p: p["a"] > 0.5), DISTS, lambda t: float(t.failed), "maximize", binary=True) == (
        None,
        "too few trials to rank parameters: 3 (at least 4)",
    )
    importances, note = param_importances(_trials(10, lambda p: False), DISTS, lambda t: float(t.failed), "maximize", binary=True)
    assert importances is None and "the same (0) for all 10 trials" in note
    outside = _trials(10, lambda p: p["a"] > 0.5)
    importances, note = param_importances(
        outside, {"a": FloatDistribution(0, 0.5)}, lambda t: float(t.failed), "maximize", binary=True
    )
    assert importances is None and "outside the space" in note


def test_grid_space_distributions_span_the_grid_on_a_log_scale() -> None:
    dists = search_distributions(load_space("seed-study-sweep"))
    assert dists == {"loss.box_weight": FloatDistribution(0.01, 10.0, log=True)}


# -- figures ---------------------------------------------------------------------------------------


def _titles(fig: Figure) -> list[str]:
    return [ax.get_title() for ax in fig.axes if ax.get_visible()]


def test_learning_curves_draw_only_what_the_trial_logged() -> None:
    history = {
        "train/loss": [(1, 4.0), (2, 3.0), (3, 2.0e13)],  # an explosion: log axis
        "train/loss_cls": [(1, 3.0), (2, 2.0), (3, float("nan"))],
        "val/ap": [(1, 0.01), (2, 0.05)],
        "val/fp": [(1, 30.0), (2, 40.0)],
        "val/num_images": [(1, 16.0), (2, 16.0)],
        "health/code": [(1, 0.0), (2, 0.0)],
    }
    fig = plots.learning_curves(history, title="t1")
    assert _titles(fig) == ["training loss", "validation", "per validation image", "validation counts"]
    loss, val, per_image, _ = (ax for ax in fig.axes if ax.get_visible())
    assert loss.get_yscale() == "log" and val.get_yscale() == "linear"
    assert [line.get_label() for line in per_image.get_lines()] == ["val/fp_per_image"]
    assert list(per_image.get_lines()[0].get_ydata()) == [30 / 16, 40 / 16]
    assert plots.png_bytes(fig).startswith(b"\x89PNG")
    with pytest.raises(ValueError, match="no finite values"):
        plots.learning_curves({"val/ap": [(1, float("nan"))], "health/code": [(1, 0.0)]})


def test_atlas_pairs_and_log_axes() -> None:
    sampled = ["optim.lr", "schedule.warmup_iters", "loss.box_weight", "loss.class_weight"]
    assert plots.atlas_pairs(sampled, "val/ap") == [
        ("loss.box_weight", "loss.class_weight"),
        ("optim.lr", "schedule.warmup_iters"),
    ]
    assert plots.atlas_pairs(["loss.box_weight"], "val/ap") == [("loss.box_weight", "val/ap")]
    points = [
        plots.AtlasPoint(
            "a", "healthy", {"optim.lr": 0.01, "schedule.warmup_iters": 100, "loss.box_weight": 1.0, "loss.class_weight": 1.0}
        ),
        plots.AtlasPoint(
            "b",
            "stopped:diverged",
            {"optim.lr": 5.0, "schedule.warmup_iters": 0, "loss.box_weight": 0.1, "loss.class_weight": 2.0},
        ),
    ]
    fig = plots.failure_atlas(points, plots.atlas_pairs(sampled, "val/ap"), log_axes={"optim.lr", "loss.box_weight"})
    box, lr = (ax for ax in fig.axes if ax.get_visible())
    assert (box.get_xscale(), box.get_yscale(), lr.get_xscale(), lr.get_yscale()) == ("log", "linear", "log", "linear")
    assert [t.get_text() for t in fig.legends[0].get_texts()][:2] == ["healthy (1)", "stopped:diverged (1)"]


def test_overlay_colours_trials_by_category() -> None:
    histories = {"a": {"val/ap": [(1, 0.1), (2, 0.2)]}, "b": {"val/ap": [(1, 0.0)]}}
    fig = plots.overlay_curves(histories, {"a": "healthy", "b": "stopped:diverged"}, keys=["val/ap", "val/recall"], highlight="a")
    (ax,) = [ax for ax in fig.axes if ax.get_visible()]
    colours = {line.get_color() for line in ax.get_lines()}
    assert colours == {plots.category_color("healthy"), plots.category_color("stopped:diverged")}
    assert plots.trial_category("completed", "fp-surge") == "completed:fp-surge"
    assert plots.trial_category("completed", "healthy") == "healthy"
