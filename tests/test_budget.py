"""The emotion budget (model.max_emotion_loss): its controller, and a constrained Hybrid's job."""

import math

import pytest
import torch
from mlflow.tracking import MlflowClient

from anonemo.errors import ConfigError
from anonemo.job import run
from anonemo.metrics import (
    BUDGET_SHIPPED_ROUND,
    REFERENCE,
    ROUND_BETA,
    ROUND_BUDGET_REFERENCE,
    ROUND_BUDGET_SIGNAL,
    ROUND_BUDGET_SLACK,
    ROUND_EXPECTED_EMOTION,
)
from anonemo.models.classifiers import MultiTaskModule
from anonemo.models.hybrid import PAPER_ADAM
from anonemo.models.networks import Networks
from anonemo.models.budget import BETA_RANGE, MAX_GROWTH, SMOOTHING, STEP_POINTS, EmotionBudget, expected_accuracy
from anonemo.tracking.store import tracking_uri

SMALL_NET = Networks(image_size=32, conv_channels=(4, 8, 8), fc_hidden=(16,), bottleneck=8, dropout=0.0)


def test_expected_accuracy_is_the_mean_probability_of_the_true_class():
    logits = torch.log(torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.6, 0.3]]))
    assert expected_accuracy(logits, torch.tensor([0, 2])) == pytest.approx(100 * (0.7 + 0.3) / 2)


def test_round_zero_keeps_the_first_beta_and_starts_the_signal_at_the_reference():
    budget = EmotionBudget(max_loss=2)
    beta, logged = budget.step(0, 0.3, 61.0)
    assert beta == 0.3
    assert logged == {ROUND_BUDGET_REFERENCE: 61.0, ROUND_BUDGET_SIGNAL: 61.0, ROUND_BUDGET_SLACK: 2.0}
    given = EmotionBudget(max_loss=2, reference=58.0)  # the level the reference holds past its selected epoch
    assert given.step(0, 0.3, 61.0)[1] == {ROUND_BUDGET_REFERENCE: 58.0, ROUND_BUDGET_SIGNAL: 58.0,
                                           ROUND_BUDGET_SLACK: 2.0}


def test_beta_grows_slowly_while_there_is_emotion_to_spend_and_falls_fast_when_there_is_not():
    budget = EmotionBudget(max_loss=2)
    budget.step(0, 0.3, 60.0)
    beta, logged = budget.step(1, 0.3, 60.0)  # no loss yet: 2 points of slack, capped growth
    assert logged[ROUND_BUDGET_SLACK] == 2.0 and beta == pytest.approx(0.3 * MAX_GROWTH)
    beta, logged = budget.step(2, 1.0, 50.0)  # smoothed half way to 50: 55, 3 points overspent
    assert logged[ROUND_BUDGET_SIGNAL] == pytest.approx(60.0 + SMOOTHING * (50.0 - 60.0))
    assert logged[ROUND_BUDGET_SLACK] == pytest.approx(-3.0)
    assert beta == pytest.approx(0.5)  # 2 ** (-3 / 2) is under a half: at most halved per round
    beta, logged = budget.step(3, 1.0, 58.5)  # smoothed 56.75: 1.25 points overspent
    assert beta == pytest.approx(2 ** (logged[ROUND_BUDGET_SLACK] / STEP_POINTS))


def test_beta_stays_within_its_range():
    budget = EmotionBudget(max_loss=10)
    budget.step(0, 1.0, 50.0)
    assert budget.step(1, BETA_RANGE[1], 50.0)[0] == BETA_RANGE[1]
    assert budget.step(2, BETA_RANGE[0], 0.0)[0] == BETA_RANGE[0]


@pytest.mark.parametrize("loss", [-1, 101])
def test_a_budget_outside_0_to_100_points_is_refused(tiny_config, loss):
    with pytest.raises(ConfigError, match=rf"model.max_emotion_loss={loss} must be between 0 and 100"):
        run(tiny_config("model=hybrid_standardised", f"model.max_emotion_loss={loss}"))


def test_constrained_hybrid_starts_from_its_reference_and_sets_each_rounds_beta_by_the_budget(tiny_config):
    rounds = 4
    cfg = tiny_config("model=hybrid_standardised", "model.max_emotion_loss=2", "model.init_epochs=1",
                      f"model.rounds={rounds}", "model.refit_epochs=2", "transfer.max_epochs=3", "callbacks.patience=2",
                      "audit.enabled=false")
    metrics = run(cfg)
    client = MlflowClient(tracking_uri(cfg))
    (logged,) = client.search_runs([client.get_experiment_by_name(cfg.logger.experiment_name).experiment_id])

    def history(key):
        return {m.step: m.value for m in client.get_metric_history(logged.info.run_id, key)}

    # The reference is scored like the Emotion CNN; the budget's reference is its validation level
    # from the selected epoch on, one value for every round.
    assert 0 <= metrics[REFERENCE] <= 100 and f"{REFERENCE}/val_acc" in metrics
    signal, val_emotion = history(ROUND_BUDGET_SIGNAL), history(f"{ROUND_EXPECTED_EMOTION}/val")
    assert sorted(signal) == list(range(rounds + 1))
    (reference,) = set(history(ROUND_BUDGET_REFERENCE).values())
    assert 0 < reference < 100
    # Every round's beta is what the controller made of the rounds before it, from the logged signal.
    budget, beta, betas = EmotionBudget(2, reference=reference), cfg.model.beta, history(ROUND_BETA)
    for round_ in range(rounds + 1):
        if round_:
            assert betas[round_] == pytest.approx(beta)
        beta, state = budget.step(round_, beta, val_emotion[round_])
        assert state[ROUND_BUDGET_SLACK] == pytest.approx(history(ROUND_BUDGET_SLACK)[round_])
    last_within = max(r for r, slack in history(ROUND_BUDGET_SLACK).items() if slack >= 0)
    assert metrics[BUDGET_SHIPPED_ROUND] == (rounds if history(ROUND_BUDGET_SLACK)[rounds] >= 0 else last_within)
    assert "hybrid_rounds.png" in {a.path for a in client.list_artifacts(logged.info.run_id)}
    assert not math.isnan(metrics["Hybrid2Emotion"])


def test_the_references_level_is_its_mean_from_the_first_best_epoch_on():
    module = MultiTaskModule(SMALL_NET.base(), SMALL_NET.head(8, 3), SMALL_NET.head(8, 4), 0.5, PAPER_ADAM)
    module.val_history = [(20.0, 30.0), (50.0, 55.0), (50.0, 60.0), (40.0, 52.0)]
    assert module.continued_level() == pytest.approx((55.0 + 60.0 + 52.0) / 3)
