"""The names of the metrics anonemo logs to MLflow, defined once.

The paper names a model's accuracy after what it was trained for (``Emotion``, ``Face``) and a
fresh head on a frozen base after both (``Emotion2Face``: a Face head on the Emotion CNN's base).
Accuracies are test-fold percentages; ``<name>/chance``, ``<name>/macro_f1`` and
``<name>/val_acc`` sit beside them.
"""

from __future__ import annotations

# What a network trained end to end on a task is called in the paper's tables.
TASK_METRIC = {"emotion": "Emotion", "identity": "Face"}
HYBRID = "Hybrid"


def fresh_head_metric(source: str, task: str) -> str:
    """A fresh ``task`` head on the frozen base of the model called ``source``: ``Emotion2Face``."""
    return f"{source}2{TASK_METRIC[task]}"


def is_fresh_head_metric(name: str, task: str) -> bool:
    """Whether ``name`` is a fresh ``task`` head's metric (``<source>2Face`` for identity)."""
    source, _, measured = name.partition("2")
    return bool(source) and measured == TASK_METRIC[task] and "/" not in name


EMOTION, FACE = TASK_METRIC["emotion"], TASK_METRIC["identity"]
EMOTION2FACE = fresh_head_metric(EMOTION, "identity")
HYBRID2EMOTION, HYBRID2FACE = fresh_head_metric(HYBRID, "emotion"), fresh_head_metric(HYBRID, "identity")
PAPER_METRICS = (FACE, EMOTION, EMOTION2FACE, HYBRID2EMOTION, HYBRID2FACE)
# Fresh heads on a base after a post-hoc erasure (``erasure=leace``): Erased2Emotion, Erased2Face.
ERASED = "Erased"
ERASED2EMOTION, ERASED2FACE = fresh_head_metric(ERASED, "emotion"), fresh_head_metric(ERASED, "identity")
ERASURE_RANK = "erasure/rank"


def own_head_metric(model: str, task: str) -> str:
    """A model's own head for ``task`` scored on the test fold: ``Hybrid/emotion_head``."""
    return f"{model}/{task}_head"


def chance(metric: str) -> str:
    return f"{metric}/chance"


def val_acc(metric: str) -> str:
    """The validation accuracy of the checkpoint selected for ``metric``: what searches may use."""
    return f"{metric}/val_acc"


def audit(task: str, attacker: str = "max") -> str:
    """``audit/<task>/<attacker>``: an attacker's test accuracy on the frozen base's features
    (``max``: the strongest; ``chance``; ``gallery``); ``task`` may be ``emotion_output/identity``."""
    return f"audit/{task}/{attacker}"


IDENTITY_MAX = audit("identity")
IDENTITY_MAX_VAL = f"{IDENTITY_MAX}/val"
IDENTITY_MAX_NULL = f"{IDENTITY_MAX}/null"
IDENTITY_MAX_P_VALUE = f"{IDENTITY_MAX}/p_value"
IDENTITY_CHANCE = audit("identity", "chance")
IDENTITY_GALLERY = audit("identity", "gallery")
EMOTION_MAX = audit("emotion")
EMOTION_OUTPUT_TASK = "emotion_output/identity"
EMOTION_OUTPUT_IDENTITY_MAX = audit(EMOTION_OUTPUT_TASK)
# The linkage audit (anonemo/audit/linkage.py): same-person decisions between originals, for anyone.
LINKAGE = "audit/linkage"
LINKAGE_AUC, LINKAGE_EER, LINKAGE_RANK1 = f"{LINKAGE}/auc", f"{LINKAGE}/eer", f"{LINKAGE}/rank1"

# The Hybrid's per-round curves, logged with the round as the MLflow step: the emotion head's
# accuracy, the strongest identity head's after the adversarial step and after its re-fit, and the
# emotion head's expected accuracy (the mean probability of the true class), each per side (%).
EMOTION_ACC, IDENTITY_ACC, REFIT_IDENTITY_ACC, EXPECTED_EMOTION = (
    "emotion_acc", "identity_acc", "refit_identity_acc", "emotion_expected_acc")


def round_curve(curve: str, side: str) -> str:
    """``round/<curve>/<side>``: ``round/emotion_acc/val``."""
    return f"round/{curve}/{side}"


ROUND_CURVES = tuple(round_curve(curve, side) for curve in (EMOTION_ACC, IDENTITY_ACC, REFIT_IDENTITY_ACC)
                     for side in ("train", "val"))
ROUND_BETA = "round/beta"
# The emotion budget's state after each round (model.max_emotion_loss), per side (/train, /val):
# its reference, the smoothed emotion it compares with it, the slack (points left to spend;
# negative: overspent); round/budget/slack alone is the tighter side's.
ROUND_BUDGET_REFERENCE, ROUND_BUDGET_SIGNAL, ROUND_BUDGET_SLACK = (
    f"round/budget/{name}" for name in ("reference", "emotion", "slack"))
ROUND_BUDGET_CEILING = "round/budget/ceiling"  # the most beta may be after the round (docs/algorithm.md)
# The round whose weights a constrained Hybrid ends with: the last, unless it overspent the budget.
BUDGET_SHIPPED_ROUND = "budget/shipped_round"
# The epochs a constrained Hybrid's initialisation ran: until its validation emotion stopped rising.
BUDGET_INIT_EPOCHS = "budget/init_epochs"
# Where a round's time goes: its training (adversarial epochs), then the round end's parts.
ROUND_TIMES = tuple(f"round/time/{part}_s" for part in ("training", "features", "refit", "scoring"))
ROUND_FEATURE_SCALE = "round/feature_scale"
WALL_TIME = "wall_time_s"

# A job's headline numbers beside its model's own (which its recipe declares, and the job records
# in the run's tag HEADLINE_TAG), as its summary shows them: (metric, label); each has its chance
# level beside it (``chance_of``). Every other metric stays in MLflow.
HEADLINE_TAG, EMOTION_METRIC_TAG = "anonemo.headline", "anonemo.emotion_metric"
AUDIT_HEADLINE = (
    (IDENTITY_MAX, "identity, strongest attacker"),
    (IDENTITY_GALLERY, "identity, gallery attacker"),
    (EMOTION_MAX, "emotion, strongest attacker"),
    (EMOTION_OUTPUT_IDENTITY_MAX, "identity off the emotion output"),
    (LINKAGE_AUC, "linkage, same-person AUC"),
    (LINKAGE_EER, "linkage, equal error rate"),
    (LINKAGE_RANK1, "linkage, rank-1 identification"),
)
# Headline numbers that are fractions (0-1), not accuracies in %.
FRACTIONS = (LINKAGE_AUC, LINKAGE_EER)
# The audits whose accuracy can fall below chance, which is not privacy (docs/audit.md).
CHANCE_BOUNDED_AUDITS = (IDENTITY_MAX, IDENTITY_GALLERY, EMOTION_MAX, EMOTION_OUTPUT_IDENTITY_MAX)


def chance_of(metric: str) -> str:
    """The metric holding ``metric``'s chance level: one per audit (``audit/identity/chance`` for
    every identity attacker on the features), else ``<metric>/chance``."""
    if metric.startswith("audit/") and metric.endswith("/max"):
        return chance(metric.removesuffix("/max"))
    return chance(metric)


def below_chance(metrics: dict[str, float]) -> list[str]:
    """The audits in ``metrics`` that scored below their chance level."""
    return [name for name in CHANCE_BOUNDED_AUDITS
            if name in metrics and chance_of(name) in metrics and metrics[name] < metrics[chance_of(name)]]
