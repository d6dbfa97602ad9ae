"""What the report measures: the paper's published numbers, the columns, and ``anonymity``."""

from __future__ import annotations

from anonemo import metrics as names
from anonemo.metrics import PAPER_METRICS
from anonemo.report.collect import RunGroup

# Narula, Wang & Chaspari (ICASSP 2020), Tables 1 and 2.
PAPER_RESULTS = {
    "jaffe": dict(zip(PAPER_METRICS, (99.26, 84.27, 90.41, 81.57, 25.79))),
    "yale": dict(zip(PAPER_METRICS, (87.96, 44.61, 78.44, 49.12, 1.00))),
}
# The strongest attacker (and its permutation null, the level to read it against), the emotion
# attackers, the gallery attacker (its chance differs per fold), identity off the emotion head's
# output, and the strongest attacker on the validation side (what settings are chosen by).
AUDIT_METRICS = (names.IDENTITY_MAX, names.IDENTITY_MAX_NULL, names.EMOTION_MAX, names.IDENTITY_GALLERY,
                 names.EMOTION_OUTPUT_IDENTITY_MAX, names.IDENTITY_MAX_VAL, names.LINKAGE_AUC, names.LINKAGE_EER,
                 names.LINKAGE_RANK1)
# Fresh heads on a base after a post-hoc erasure (erasure=leace, model=emotion_inlp, ...).
ERASED_METRICS = (names.ERASED2EMOTION, names.ERASED2FACE)
COLUMNS = (*PAPER_METRICS, *ERASED_METRICS, *AUDIT_METRICS)


def emotion_baseline(groups: list[RunGroup], metric: str) -> tuple[float, float, int] | None:
    """``metric`` of the Emotion CNN (the first group that logged ``Emotion`` and ``metric``)."""
    return next((g.summary(metric) for g in groups if g.summary(names.EMOTION) and g.summary(metric)), None)


def anonymity(group: RunGroup, groups: list[RunGroup]) -> float | None:
    """1 - (identity leakage) / (leakage of the plain Emotion base), where a fold's leakage is the
    strongest audit attacker's distance from chance, |accuracy - chance|: 0 leaks as much as an
    Emotion CNN, 1 is chance. Below chance counts as leakage too: the features still tell people
    apart, the attacker reads them the wrong way round (docs/audit.md)."""
    folds = group.with_chance(names.IDENTITY_MAX)
    baseline, chance = emotion_baseline(groups, names.IDENTITY_MAX), group.chance(names.IDENTITY_MAX)
    if not folds or baseline is None or chance is None or baseline[0] <= chance:
        return None
    leakage = sum(abs(value - level) for value, level in folds) / len(folds)
    return 1 - leakage / (baseline[0] - chance)
