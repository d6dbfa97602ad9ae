"""``python -m anonemo.audit run_id=ID [refit_transfer=true]``: re-audit the saved base of a
finished run (and re-fit its fresh heads)."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from anonemo.cli import user_errors_reported
from anonemo.errors import ConfigError, require_permutations


@hydra.main(version_base="1.3", config_path="../../conf", config_name="audit")
def main(cfg: DictConfig) -> None:
    with user_errors_reported():
        if not cfg.run_id:
            raise ConfigError("run_id is required: python -m anonemo.audit run_id=<MLflow run id>.")
        require_permutations(cfg.null_permutations, "null_permutations")
        if not (cfg.attackers or cfg.refit_transfer or cfg.emotion_output):
            raise ConfigError(
                "attackers=false, refit_transfer=false and emotion_output=false leave nothing to do: set one to true."
            )
        # Imported once the options are known to be valid: torch, Lightning and MLflow take ~10 s.
        from mlflow.tracking import MlflowClient

        from anonemo.audit.saved_run import reaudit_run
        from anonemo.tracking import resolve_tracking_uri

        client = MlflowClient(resolve_tracking_uri(cfg.tracking_uri, cfg.paths.output_dir))
        metrics = reaudit_run(client, str(cfg.run_id), cfg.dataset_root, cfg.null_permutations,
                              cfg.transfer if cfg.refit_transfer else None, audit=cfg.attackers,
                              emotion_output=cfg.emotion_output)
        print(f"Run {cfg.run_id} (test fold, %):")
        refitted = [name for name in metrics if "/" not in name]  # the heads' test accuracies
        if refitted:
            print("  fresh heads re-fitted: " + "  ".join(f"{name} {metrics[name]:.1f}" for name in refitted))
        for task in ("identity", "emotion") if cfg.attackers else ():
            attackers = sorted(k.split("/")[2] for k in metrics if k.count("/") == 2 and k.startswith(f"audit/{task}/"))
            print(f"  {task:8s} " + "  ".join(f"{name} {metrics[f'audit/{task}/{name}']:.1f}" for name in attackers))
        if "audit/emotion_output/identity/max" in metrics:
            print(f"  identity off the emotion head's output: strongest {metrics['audit/emotion_output/identity/max']:.1f}")
        if "audit/identity/max/null" in metrics:
            print(f"  identity max {metrics['audit/identity/max']:.1f} against {metrics['audit/identity/max/null']:.1f} "
                  f"with permuted identities (p = {metrics['audit/identity/max/p_value']:.3f})")


if __name__ == "__main__":
    main()
