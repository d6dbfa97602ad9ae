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
ROUNDS = ("model.rounds=2", "model.init_epochs=1", "model.privacy.refit_epochs=2")


def test_bench_compares_both_paths_and_times_a_fold(tmp_path):
    output = tmp_path / "bench.json"
    result = cli(
        *TINY_SYNTHETIC, "trainer.enable_progress_bar=false", "audit.enabled=false", f"paths.output_dir={tmp_path}",
        "bench.repeats=2", "bench.epochs=1", "bench.fold_models=[emotion2face]", f"bench.output={output}", "bench.contention=1",
        f"bench.rounds.overrides=[{','.join(repr(o) for o in ROUNDS)}]", "bench.rounds.pairs=1", module="benchmarks",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    for path in ("single_task", "adversarial"):
        line = re.search(rf"^ratio anonemo/plain {path}: (\d+\.\d\d) \(repeats (\d+\.\d\d)-(\d+\.\d\d)\)$",
                         result.stdout, re.MULTILINE)
        assert line and float(line[2]) <= float(line[3])
    assert re.search(r"^slowdown beside 1 busy single_task anonemo: \d+\.\d\dx$", result.stdout, re.MULTILINE)
    results = json.loads(output.read_text())
    assert set(results["throughput"]) == {"alone", "beside 1 busy"}
    (cpu,) = [r for r in results["throughput"]["alone"] if r["device"] == "cpu"]
    for path in ("single_task", "adversarial"):
        measured = cpu["paths"][path]
        assert all(len(measured["images_per_s"][impl]) == 2 and min(measured["images_per_s"][impl]) > 0
                   for impl in ("plain", "anonemo"))
        # the printed ratio is the file's, and with 2 repeats a ratio of medians lies between the repeats' ratios
        printed = re.search(rf"^ratio anonemo/plain {path}: (\d+\.\d\d)", result.stdout, re.MULTILINE)[1]
        assert float(printed) == pytest.approx(measured["ratio_anonemo_over_plain"], abs=0.005)
        ratios = measured["ratio_per_repeat"]
        assert min(ratios) - 1e-9 <= measured["ratio_anonemo_over_plain"] <= max(ratios) + 1e-9
    fold = results["full_folds"]["emotion2face"]
    assert fold["time/base_training_s"] > 0 and fold["time/frozen_base_s"] > 0
    assert 0 < fold["time/outside_base_training_share"] < 1
    assert "fold 0 of emotion2face" in result.stdout
    # the recipe as whole commands: one pair of wait policies, then one run beside a busy process
    runs = results["rounds"]
    assert {label: len(measured) for label, measured in runs.items()} == {
        "default": 1, "OMP_WAIT_POLICY=ACTIVE": 1, "default, beside 1 busy process": 1}
    for measured in runs.values():
        assert measured[0]["wall_s"] > 0
        assert [len(measured[0]["rounds"][key]) for key in ROUND_TIMES] == [2] * 4  # rounds 1-2 (0 initialises)
    assert "hybrid_standardised per adversarial round (2 rounds of 1 runs, default waiting, alone)" in result.stdout
    assert re.search(r"^hybrid_standardised whole job alone: default \d+\.\d s, OMP_WAIT_POLICY=ACTIVE \d+\.\d s "
                     r"\(medians of 1 alternated pairs\); ratio default/ACTIVE: \d+\.\d\d", result.stdout, re.MULTILINE)
    assert re.search(r"^hybrid_standardised whole job beside 1 busy process: \d+\.\d s, slowdown \d+\.\d\dx",
                     result.stdout, re.MULTILINE)
    # the busy processes were stopped
    assert "while True: pass" not in subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout


@pytest.mark.parametrize(("environment", "expected"), [
    ({}, (None, "1000")),
    ({"OMP_WAIT_POLICY": "ACTIVE"}, ("ACTIVE", None)),
    ({"OMP_WAIT_POLICY": "PASSIVE"}, ("PASSIVE", None)),
    ({"GOMP_SPINCOUNT": "0"}, (None, "0")),
])
def test_openmp_threads_spin_briefly_unless_the_environment_says_otherwise(environment, expected):
    """Threads that spin until work comes made 2-thread jobs 2-3.5x slower beside a busy process,
    and waiting passively cost 13-17% on a quiet machine (docs/performance.md); a short spin is set
    before torch loads, and a user's own setting wins."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")} | environment
    probe = "import os, anonemo; print(os.environ.get('OMP_WAIT_POLICY'), os.environ.get('GOMP_SPINCOUNT'))"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, check=True)
    assert result.stdout.split() == [str(value) for value in expected]
