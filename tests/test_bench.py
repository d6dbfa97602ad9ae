"""The benchmark runs on a tiny size and reports what it promises (its numbers are not tested)."""

import json
import re

from conftest import TINY_SYNTHETIC
from test_bad_input import cli


def test_bench_compares_both_paths_and_times_a_fold(tmp_path):
    output = tmp_path / "bench.json"
    result = cli(
        *TINY_SYNTHETIC, "trainer.enable_progress_bar=false", "audit.enabled=false", f"paths.output_dir={tmp_path}",
        "bench.repeats=2", "bench.fold_models=[emotion2face]", f"bench.output={output}", module="anonemo.bench",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    for path in ("single_task", "adversarial"):
        assert re.search(rf"^ratio anonemo/plain {path}: \d+\.\d\d$", result.stdout, re.MULTILINE)
    results = json.loads(output.read_text())
    (cpu,) = [r for r in results["throughput"] if r["device"] == "cpu"]
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
