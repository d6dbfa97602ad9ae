"""The MLflow UI as a user sees it: `mlflow ui` over a tiny 2-fold sweep, the links anonemo prints
loaded in headless Chromium, and the page checked after its JavaScript ran (the DOM, not the HTML
the server sends). With ANONEMO_UI_SCREENSHOTS=<folder> the test also saves what it looked at
(docs/tracking.md's screenshots)."""

import html
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from test_bad_input import cli
from test_sweeps import TINY_JOB, mlflow_service

from anonemo.tracking.links import MAKE_UI, experiment_link

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium package (apt-get install chromium); "
                                                        ".ci/run installs it")
WINDOW = "1920,1000"  # wide enough that the runs table renders the headline columns


def rendered(url: str, screenshot: Path | None = None, showing: str | None = None) -> list[str]:
    """The page's visible text after its JavaScript ran, one string per text node; loaded again (up
    to three times) while it does not show ``showing`` yet: the chart view fetches its runs' metrics
    after the page's own scripts, and a loaded machine can outlast the browser's time budget."""
    command = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", f"--window-size={WINDOW}",
               "--virtual-time-budget=20000"]
    for _ in range(3):
        dom = subprocess.run([*command, "--dump-dom", url], capture_output=True, text=True, timeout=120).stdout
        text = re.sub(r"<[^>]+>", "\n", re.sub(r"<(script|style)\b.*?</\1>", "", dom, flags=re.S))
        page = [line.strip() for line in html.unescape(text).splitlines() if line.strip()]
        if showing is None or showing in page:
            break
    if screenshot is not None:
        subprocess.run([*command, f"--screenshot={screenshot}", url], capture_output=True, timeout=120)
    return page


@pytest.fixture(scope="module")
def ui(tmp_path_factory):
    """Two 2-fold sweeps (seeds 0 and 1), and `mlflow ui` over their store as `make ui` starts it;
    the first sweep's output and the UI's address."""
    folder = tmp_path_factory.mktemp("ui")
    for seed in (1, 0):
        sweep = cli("-m", *TINY_JOB, f"paths.output_dir={folder}", "fold=0,1", f"seed={seed}")
        assert sweep.returncode == 0, sweep.stderr[-2000:]
    with mlflow_service(["ui", "--backend-store-uri", f"sqlite:///{folder}/mlflow.db", "--default-artifact-root",
                         str(folder / "mlartifacts")], folder / "ui.log") as address:
        yield folder, sweep.stdout, address


def number(cell: str) -> float | None:
    try:
        return float(cell)
    except ValueError:
        return None


def screenshot(name: str) -> Path | None:
    folder = os.environ.get("ANONEMO_UI_SCREENSHOTS")
    return None if folder is None else Path(folder) / name


def test_the_printed_run_link_opens_the_run_in_the_model_training_view(ui):
    _, output, address = ui
    links = re.findall(r"make ui, then (http://127\.0\.0\.1:5000/\S+)\)", output)
    assert len(links) == 2  # one per job
    page = rendered(links[0].replace(MAKE_UI, address), screenshot("ui_run.png"))
    assert "Model registry" in page and "Evaluation runs" not in page  # the model-training side bar, not GenAI's
    assert "Model metrics" in page and "Emotion" in page


def parents(folder):
    client = MlflowClient(f"sqlite:///{folder}/mlflow.db")
    return [r for r in client.search_runs([client.get_experiment_by_name("synthetic").experiment_id])
            if r.data.tags.get("anonemo.sweep") == "parent"]


def test_the_experiment_link_opens_the_runs_table_with_the_fold_means_of_the_sweeps(ui):
    folder, output, address = ui
    sweeps = parents(folder)
    last = max(sweeps, key=lambda r: r.info.start_time)
    assert f"#/experiments/{last.info.experiment_id}/runs/{last.info.run_id}?workflowType=machine_learning" in output
    page = rendered(experiment_link("", last.info.experiment_id).replace(MAKE_UI, address),
                    screenshot("ui_runs_table.png"), showing="Emotion/mean")
    assert "Model registry" in page and "Traces 0" not in " ".join(page)
    assert {"Emotion", "Emotion/mean", "audit/identity/max", "audit/identity/max/mean"} <= set(page)  # the columns
    for parent in sweeps:
        mean = parent.data.metrics["Emotion/mean"]
        assert any(number(cell) == pytest.approx(mean, abs=1e-4) for cell in page), f"Emotion/mean {mean} is not shown"


def test_the_chart_link_compares_the_sweeps_by_their_fold_means(ui):
    folder, _, address = ui
    sweeps = parents(folder)
    page = rendered(experiment_link("", sweeps[0].info.experiment_id, charts=True).replace(MAKE_UI, address),
                    screenshot("ui_sweeps_chart.png"), showing="Emotion/mean")
    assert "Emotion/mean" in page and "Emotion/macro_f1" not in page  # the means charted, not the jobs' metrics
    for parent in sweeps:  # one bar per sweep, labelled with its mean
        assert f"{parent.data.metrics['Emotion/mean']:.2f}" in page


def test_the_benchmarks_printed_link_opens_its_report_on_the_parent_run(tmp_path):
    """A tiny suite (the Emotion CNN and GRL, one fold): its last line's link, in the UI, shows the
    parent run with the paired numbers as metrics and the report page among its artifacts."""
    from test_benchmark import tiny_suite

    result = tiny_suite(tmp_path, "folds=1", "seeds=[0]")
    assert result.returncode == 0, result.stderr[-2000:]
    (link,) = re.findall(r"with the report: (http://127\.0\.0\.1:5000/\S+)", result.stdout)
    with mlflow_service(["ui", "--backend-store-uri", f"sqlite:///{tmp_path}/mlflow.db", "--default-artifact-root",
                         str(tmp_path / "mlartifacts")], tmp_path / "ui.log") as address:
        page = rendered(link.replace(MAKE_UI, address), showing="tiny/paper/grl E4/emotion_diff/mean")
        assert "benchmark suite=tiny" in page and "tiny/paper/grl E4/emotion_diff/mean" in page
        report = link.replace(MAKE_UI, address).replace("?workflowType", "/artifacts/report/report.md?workflowType")
        page = rendered(report, screenshot("ui_benchmark_report.png"), showing="Benchmark suite")
        assert {"Benchmark suite", "tiny", "tiny/paper", "Made by:"} <= set(page)  # the Markdown, rendered
