"""What a job's metrics say in short: the summary it prints at its end, and the value a
hyper-parameter search (``hparams_search``) maximises. Both read the headline its recipe declares."""

from __future__ import annotations

from collections.abc import Sequence

from omegaconf import DictConfig

from anonemo import metrics as names
from anonemo.errors import ConfigError


def result_summary(title: str, metrics: dict[str, float], model_metrics: Sequence[str]) -> str:
    """The job's headline numbers (its model's, then ``metrics.AUDIT_HEADLINE``) as a short table,
    each beside its chance level."""
    below = set(names.below_chance(metrics))
    shown = [(name, name) for name in model_metrics] + list(names.AUDIT_HEADLINE)
    shown = [(name, label) for name, label in shown if name in metrics]
    width = max((len(label) for _, label in shown), default=0)
    lines = [f"Results of {title} (test fold; accuracies in %, AUC and EER as fractions):"]
    for name, label in shown:
        number = "5.2f" if name in names.FRACTIONS else "5.1f"
        chance = metrics.get(names.chance_of(name))
        line = f"  {label:<{width}}  {metrics[name]:{number}}" + ("" if chance is None else f"   chance {chance:{number}}")
        lines.append(line + ("   below chance (docs/audit.md)" if name in below else ""))
    lines.append(f"  wall time {metrics[names.WALL_TIME]:.0f} s")
    return "\n".join(lines)


def search_objective(cfg: DictConfig, metrics: dict[str, float], emotion_metric: str | None) -> float:
    """The value a hyper-parameter search (``hparams_search``) maximises, from validation only:
    the validation accuracy of the model's emotion metric (``emotion_metric``, the recipe's:
    Hybrid2Emotion for a Hybrid), penalised by how far the strongest audit attacker's validation
    accuracy (``audit/identity/max/val``) exceeds ``search.identity_ceiling``. Not a fresh
    identity head's: one head is the weak measure that a base can fool while other attackers
    still read identity.
    """
    if emotion_metric is None or names.val_acc(emotion_metric) not in metrics:
        raise ConfigError(f"hparams_search=hybrid_optuna maximises a model's validation emotion, and model={cfg.model.name} "
                          "scores no emotion: use a model with an emotion head (model=hybrid_standardised).")
    if names.IDENTITY_MAX_VAL not in metrics:
        raise ConfigError("hparams_search=hybrid_optuna scores identity with the audit's closed-set attackers: set "
                          "audit.enabled=true under cv.protocol=paper (under subject_disjoint, choose β with "
                          "python -m anonemo.calibrate, which reads the linkage audit).")
    excess = max(0.0, metrics[names.IDENTITY_MAX_VAL] - cfg.search.identity_ceiling)
    return metrics[names.val_acc(emotion_metric)] - cfg.search.penalty * excess
