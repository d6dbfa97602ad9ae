"""``python -m anonemo.audit run_id=ID [refit_fresh_heads=true]``: re-audit the saved base of a
finished run (and re-fit its fresh heads)."""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from anonemo.cli import check_override_keys, user_errors_reported
from anonemo.errors import ConfigError, require_permutations


@hydra.main(version_base="1.3", config_path="../../conf", config_name="audit")
def main(cfg: DictConfig) -> None:
    with user_errors_reported(discard_run_dir=True):  # an error here comes before any output
        if not cfg.run_id:
            raise ConfigError("run_id is required: python -m anonemo.audit run_id=<MLflow run id>.")
        require_permutations(cfg.null_permutations, "null_permutations")
        if not (cfg.attack_features or cfg.refit_fresh_heads or cfg.emotion_output):
            raise ConfigError(
                "attack_features=false, refit_fresh_heads=false and emotion_output=false leave nothing to do: set one to true."
            )
        # Imported once the options are known to be valid: torch, Lightning and MLflow take ~10 s.
        from mlflow.tracking import MlflowClient

        from anonemo import metrics as names
        from anonemo.audit.saved_run import reaudit_run
        from anonemo.tracking.store import resolve_tracking_uri

        client = MlflowClient(resolve_tracking_uri(cfg.tracking_uri, cfg.paths.output_dir))
        metrics = reaudit_run(client, str(cfg.run_id), cfg.audit.attackers, cfg.dataset_root, cfg.null_permutations,
                              cfg.fresh_head if cfg.refit_fresh_heads else None, audit=cfg.attack_features,
                              emotion_output=cfg.emotion_output)
        print(f"Run {cfg.run_id} (test fold, %):")
        refitted = [name for name in metrics if "/" not in name]  # the fresh heads' test accuracies
        if refitted:
            print("  fresh heads re-fitted: " + "  ".join(f"{name} {metrics[name]:.1f}" for name in refitted))
        attackers = [name for name, node in cfg.audit.attackers.items() if node is not None] + ["max", "gallery", "chance"]
        for task in ("identity", "emotion") if cfg.attack_features else ():
            print(f"  {task:8s} " + "  ".join(f"{name} {metrics[names.audit(task, name)]:.1f}" for name in attackers))
        if names.EMOTION_OUTPUT_IDENTITY_MAX in metrics:
            print(f"  identity off the emotion head's output: strongest {metrics[names.EMOTION_OUTPUT_IDENTITY_MAX]:.1f}")
        if names.IDENTITY_MAX_NULL in metrics:
            print(f"  identity max {metrics[names.IDENTITY_MAX]:.1f} against {metrics[names.IDENTITY_MAX_NULL]:.1f} "
                  f"with permuted identities (p = {metrics[names.IDENTITY_MAX_P_VALUE]:.3f})")


if __name__ == "__main__":
    check_override_keys("audit", sys.argv[1:])
    main()
