"""The benchmark runs on a tiny size and reports what it promises (its numbers are not tested)."""

import json
import os
import re
import subprocess
import sys

import pytest
from conftest import TINY_SYNTHETIC
from test_bad_input import cli

from anonemo.metrics import ROUND_TIMES

# The rounds' job keeps the command's tiny sizes; the benchmark's JAFFE-sized set is replaced.
ROUNDS = ("dataset.adversarial_rounds=2", "model.init_epochs=1", "model.refit_epochs=2")


def test_bench_compares_both_paths_and_times_a_fold(tmp_path):
    output = tmp_path / "bench.json"
    result = cli(
        *TINY_SYNTHETIC, "trainer.enable_progress_bar=false", "audit.enabled=false", f"paths.output_dir={tmp_path}",
        "bench.repeats=2", "bench.fold_models=[emotion2face]", f"bench.output={output}", "bench.contention=1",
        f"bench.rounds.overrides=[{','.join(repr(o) for o in ROUNDS)}]", module="anonemo.bench",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    for path in ("single_task", "adversarial"):
        assert re.search(rf"^ratio anonemo/plain {path}: \d+\.\d\d$", result.stdout, re.MULTILINE)
    assert re.search(r"^slowdown beside 1 busy single_task anonemo: \d+\.\d\dx$", result.stdout, re.MULTILINE)
    results = json.loads(output.read_text())
    assert set(results["throughput"]) == set(results["rounds"]) == {"alone", "beside 1 busy"}
    (cpu,) = [r for r in results["throughput"]["alone"] if r["device"] == "cpu"]
    for path in ("single_task", "adversarial"):
        measured = cpu["paths"][path]
        assert all(len(measured["images_per_s"][impl]) == 2 and min(measured["images_per_s"][impl]) > 0
                   for impl in ("plain", "anonemo"))
        medians = measured["median_images_per_s"]
        assert measured["ratio_anonemo_over_plain"] == medians["anonemo"] / medians["plain"]
    fold = results["full_folds"]["emotion2face"]
    assert fold["time/base_training_s"] > 0 and fold["time/frozen_base_s"] > 0
    assert 0 < fold["time/outside_base_training_share"] < 1
    assert "fold 0 of emotion2face" in result.stdout
    for condition in ("alone", "beside 1 busy"):
        parts = results["rounds"][condition]
        assert [len(parts[key]) for key in ROUND_TIMES] == [2] * 4  # rounds 1 and 2 (round 0 is the initialisation)
        assert all(t > 0 for values in parts.values() for t in values)
        assert f"hybrid_standardised per adversarial round (2 rounds, {condition})" in result.stdout
    # the busy processes were stopped
    assert "while True: pass" not in subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout


@pytest.mark.parametrize(("environment", "expected"), [({}, "PASSIVE"), ({"OMP_WAIT_POLICY": "ACTIVE"}, "ACTIVE")])
def test_openmp_threads_wait_passively_unless_the_environment_says_otherwise(environment, expected):
    """Spinning OpenMP threads made 2-thread jobs 3-4x slower beside a busy process
    (docs/performance.md); the policy is set before torch loads, and a user's own value wins."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"} | environment
    probe = "import os, anonemo; print(os.environ['OMP_WAIT_POLICY'])"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, check=True)
    assert result.stdout.strip() == expected
