"""``python -m benchmarks``: anonemo's training throughput against a plain PyTorch loop, fold 0 of
each model through the real job, and the recommended recipe's rounds as whole commands
(docs/performance.md). It prints the medians, peak memory and a line ``ratio anonemo/plain
<path>: <ratio>`` per path (with its range over the repeats), where each job's wall time went, and
writes everything as JSON. On a machine with a GPU the throughput is measured there too (detected,
not configured). ``bench.contention=N`` measures the throughput again beside N busy
single-threaded processes and reports the slowdown. It lives outside the ``anonemo`` package:
no job imports it, and it only reads what jobs log.
"""

from __future__ import annotations

import json
import platform
import statistics
import sys
from pathlib import Path

import hydra
import pytorch_lightning as pl
import torch
from omegaconf import DictConfig

from anonemo.cli import check_override_keys, user_errors_reported
from anonemo.data.pipeline import fold_data
from anonemo.errors import ConfigError
from anonemo.metrics import ROUND_TIMES
from anonemo.threads import configure_cpu
from benchmarks.jobs import BESIDE_BUSY, time_full_folds, time_rounds
from benchmarks.load import busy_processes, load_conditions
from benchmarks.throughput import measure_throughput


def report(results: dict) -> list[str]:
    lines = []
    for condition, device_results in results["throughput"].items():
        for device_result in device_results:
            device = device_result["device"]
            suffix = ("" if device == "cpu" else f"@{device}") + ("" if condition == "alone" else f" {condition}")
            lines.append(f"{device}{'' if condition == 'alone' else ', ' + condition}: {device_result['train_images']} "
                         f"training images per epoch, batch {results['batch_size']}, precision {results['precision']}, "
                         f"{results['torch_threads']} torch thread(s)")
            for path, r in device_result["paths"].items():
                m = r["median_images_per_s"]
                lines.append(f"  {path:12s} plain {m['plain']:7.0f} img/s   anonemo {m['anonemo']:7.0f} img/s   "
                             f"peak memory {r['peak_memory_mb']['plain']:.0f} / {r['peak_memory_mb']['anonemo']:.0f} MB")
            for path, r in device_result["paths"].items():
                lines.append(f"ratio anonemo/plain {path}{suffix}: {r['ratio_anonemo_over_plain']:.2f} "
                             f"(repeats {min(r['ratio_per_repeat']):.2f}-{max(r['ratio_per_repeat']):.2f})")
    alone = results["throughput"]["alone"][0]["paths"]
    for condition, device_results in results["throughput"].items():
        if condition != "alone":
            for path, r in device_results[0]["paths"].items():
                lines.append(f"slowdown {condition} {path} anonemo: "
                             f"{alone[path]['median_images_per_s']['anonemo'] / r['median_images_per_s']['anonemo']:.2f}x")
    for model, t in results.get("full_folds", {}).items():
        lines.append(
            f"fold 0 of {model}: {t['wall_time_s']:.1f} s; base training {t['time/base_training_s']:.1f} s, "
            f"data {t['time/data_s']:.1f} s, frozen-base phases {t['time/frozen_base_s']:.1f} s "
            f"({100 * t['time/frozen_base_share']:.1f}%), evaluation {t['time/evaluation_s']:.1f} s, "
            f"other {t['time/other_s']:.1f} s; outside base training {100 * t['time/outside_base_training_share']:.1f}%"
        )
    runs = results.get("rounds")
    if runs:
        parts = {key: [t for run in runs["default"] for t in run["rounds"][key]] for key in ROUND_TIMES}
        medians = {key.split("/")[-1].removesuffix("_s"): statistics.median(values) for key, values in parts.items()}
        total = sum(medians.values())
        lines.append(f"{results['rounds_model']} per adversarial round ({len(parts[ROUND_TIMES[0]])} rounds of "
                     f"{len(runs['default'])} runs, default waiting, alone): {total:.2f} s median; "
                     + ", ".join(f"{part} {s:.2f} s ({100 * s / total:.0f}%)" for part, s in medians.items()))
        walls = {label: [run["wall_s"] for run in measured] for label, measured in runs.items()}
        alone = statistics.median(walls["default"])
        pairs = [d / a for d, a in zip(walls["default"], walls["OMP_WAIT_POLICY=ACTIVE"])]
        lines.append(f"{results['rounds_model']} whole job alone: default {alone:.1f} s, OMP_WAIT_POLICY=ACTIVE "
                     f"{statistics.median(walls['OMP_WAIT_POLICY=ACTIVE']):.1f} s (medians of {len(pairs)} alternated "
                     f"pairs); ratio default/ACTIVE: {statistics.median(pairs):.2f} (pairs {min(pairs):.2f}-{max(pairs):.2f})")
        busy = statistics.median(walls[BESIDE_BUSY])
        lines.append(f"{results['rounds_model']} whole job beside 1 busy process: {busy:.1f} s, slowdown "
                     f"{busy / alone:.2f}x its time alone")
    return lines


@hydra.main(version_base="1.3", config_path="../conf", config_name="bench")
def main(cfg: DictConfig) -> None:
    with user_errors_reported():
        for option in ("repeats", "epochs"):
            if cfg.bench[option] < 1:
                raise ConfigError(f"bench.{option}={cfg.bench[option]} must be at least 1.")
        if cfg.bench.contention < 0:
            raise ConfigError(f"bench.contention={cfg.bench.contention} must be 0 (alone only) or a number of busy processes.")
        threads = configure_cpu(cfg.threads)
        pl.seed_everything(cfg.seed, verbose=False)
        data = fold_data(cfg)
        devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
        results = {
            "dataset": cfg.dataset.name,
            "batch_size": cfg.data.batch_size,
            "precision": str(cfg.trainer.precision),
            "image_size": cfg.dataset.image_size,
            "torch_threads": threads,
            "torch": torch.__version__,
            "machine": platform.processor() or platform.machine(),
            "throughput": {},
        }
        for condition, busy in load_conditions(cfg):
            with busy_processes(busy):
                results["throughput"][condition] = [measure_throughput(cfg, data, device) for device in devices]
        if cfg.bench.full_folds:
            results["full_folds"] = time_full_folds(cfg)
        if cfg.bench.rounds.enabled:
            if cfg.bench.rounds.pairs < 1:
                raise ConfigError(f"bench.rounds.pairs={cfg.bench.rounds.pairs} must be at least 1.")
            results["rounds_model"] = cfg.bench.rounds.model
            results["rounds"] = time_rounds(cfg)
        output = Path(cfg.bench.output)
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(results, indent=2))
        for line in report(results):
            print(line)
        print(f"written to {output}")


if __name__ == "__main__":
    check_override_keys("bench", sys.argv[1:])
    main()
