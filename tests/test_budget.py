"""The emotion budget (model.max_emotion_loss): its controller, and a constrained Hybrid's job."""

import copy
import math
import warnings

import pytest
import torch
from mlflow.tracking import MlflowClient

from anonemo.errors import ConfigError
from anonemo.models.rounds import round_curves_figure
from anonemo.job import run
from anonemo.metrics import (
    BUDGET_SHIPPED_ROUND,
    EMOTION_ACC,
    EXPECTED_EMOTION,
    ROUND_BETA,
    ROUND_BUDGET_CEILING,
    ROUND_BUDGET_REFERENCE,
    ROUND_BUDGET_SIGNAL,
    ROUND_BUDGET_SLACK,
    round_curve,
)
from anonemo.models.weight import (BETA_RANGE, CEILING_FACTOR, MAX_GROWTH, REFERENCE_EPOCHS, RISE_POINTS, SMOOTHING,
                                   STEP_POINTS, EmotionBudget, emotion_reading, expected_accuracy)
from anonemo.tracking.store import tracking_uri
from test_hybrid import data, hybrid  # noqa: F401 (data: the module's fixture)


def test_the_budget_reads_accuracy_on_the_training_side_and_expected_accuracy_on_validation():
    logits = torch.log(torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.6, 0.3]]))
    labels = torch.tensor([0, 2])
    assert expected_accuracy(logits, labels) == pytest.approx(100 * (0.7 + 0.3) / 2)
    assert emotion_reading("val", logits, labels) == pytest.approx(50.0)
    assert emotion_reading("train", logits, labels) == 50.0  # the first right, the second wrong
    assert emotion_reading("train", logits, torch.tensor([0, 1])) == 100.0


def both(train, val=None):
    return {"train": train, "val": train if val is None else val}


def step(budget, round_, beta, emotion):
    """The budget's step after ``round_``, which ran at ``beta``: the next beta and what it logs."""
    budget.beta = beta
    logged = budget.after_round(round_, emotion)
    return budget.beta, logged


def start(budget, beta, emotion):
    """Round 0 of a budget whose initialisation read ``emotion`` once."""
    budget.read_initialisation(emotion)
    return step(budget, 0, beta, emotion)


def test_the_reference_is_the_mean_of_the_initialisations_last_readings_and_round_zero_keeps_beta():
    budget = EmotionBudget(max_loss=2, beta=0.3)
    for train, val in ((50.0, 20.0), (90.0, 55.0), (92.0, 58.0), (92.0, 58.0), (94.0, 61.0), (92.0, 58.0)):
        budget.read_initialisation(both(train, val))
    beta, logged = step(budget, 0, 0.3, both(92.0, 58.0))  # round 0's reading is the last one read
    assert beta == 0.3
    # the last REFERENCE_EPOCHS readings, not the first, barely trained one
    assert logged[f"{ROUND_BUDGET_REFERENCE}/train"] == 92.0 and logged[f"{ROUND_BUDGET_REFERENCE}/val"] == 58.0
    assert logged[f"{ROUND_BUDGET_SIGNAL}/val"] == 58.0 and logged[ROUND_BUDGET_SLACK] == 2.0


def test_the_initialisation_has_plateaued_once_its_smoothed_validation_emotion_stops_rising():
    rising = EmotionBudget(max_loss=2, beta=0.3)
    for val in range(20, 70, 5):
        rising.read_initialisation(both(90.0, float(val)))
        assert not rising.plateaued()
    flat = EmotionBudget(max_loss=2, beta=0.3)
    for _ in range(REFERENCE_EPOCHS - 1):
        flat.read_initialisation(both(90.0, 50.0))
        assert not flat.plateaued()  # too few readings to tell
    flat.read_initialisation(both(90.0, 50.0 + RISE_POINTS))  # a rise of no more than RISE_POINTS after smoothing
    assert flat.plateaued()
    flat.read_initialisation(both(90.0, 70.0))  # a jump restarts the wait
    assert not flat.plateaued()


def test_beta_grows_slowly_while_there_is_emotion_to_spend_and_falls_fast_when_there_is_not():
    budget = EmotionBudget(max_loss=2, beta=0.3)
    start(budget, 0.3, both(60.0))
    beta, logged = step(budget, 1, 0.3, both(60.0))  # no loss yet: 2 points of slack, capped growth
    assert logged[ROUND_BUDGET_SLACK] == 2.0 and beta == pytest.approx(0.3 * MAX_GROWTH)
    beta, logged = step(budget, 2, 1.0, both(50.0))  # smoothed half way to 50: 55, 3 points overspent
    assert logged[f"{ROUND_BUDGET_SIGNAL}/val"] == pytest.approx(60.0 + SMOOTHING * (50.0 - 60.0))
    assert logged[ROUND_BUDGET_SLACK] == pytest.approx(-3.0)
    assert beta == pytest.approx(0.5)  # 2 ** (-3 / 2) is under a half: at most halved per round
    beta, logged = step(budget, 3, 1.0, both(58.5))  # smoothed 56.75: 1.25 points overspent
    assert beta == pytest.approx(2 ** (logged[ROUND_BUDGET_SLACK] / STEP_POINTS))


def test_the_tighter_side_sets_beta():
    budget = EmotionBudget(max_loss=2, beta=0.3)
    start(budget, 0.3, both(98.0, 60.0))
    beta, logged = step(budget, 1, 0.3, both(90.0, 64.0))  # validation gained, the training side lost 4 points
    assert logged[f"{ROUND_BUDGET_SLACK}/val"] == pytest.approx(4.0)
    assert logged[ROUND_BUDGET_SLACK] == logged[f"{ROUND_BUDGET_SLACK}/train"] == pytest.approx(-2.0)
    assert beta == pytest.approx(0.15)


def test_a_round_that_raised_beta_into_a_collapse_of_training_emotion_caps_beta_for_good():
    budget = EmotionBudget(max_loss=2, beta=0.3)
    start(budget, 0.3, both(90.0, 60.0))
    beta, logged = step(budget, 1, 0.3, both(78.0, 60.0))  # round 1 collapses: the adversary's start, no cap
    assert beta == 0.15 and logged[ROUND_BUDGET_CEILING] == BETA_RANGE[1]
    step(budget, 2, 0.15, both(100.0, 70.0))  # recovered
    beta, logged = step(budget, 3, 0.4, both(87.0, 70.0))  # raised to 0.4: 0.5 points overspent, noise: no cap
    assert logged[ROUND_BUDGET_CEILING] == BETA_RANGE[1]
    beta, logged = step(budget, 4, 1.0, both(70.0, 60.0))  # raised to 1 and collapsed: capped at 0.7
    assert beta == 0.5 and logged[ROUND_BUDGET_CEILING] == pytest.approx(CEILING_FACTOR)
    beta, logged = step(budget, 5, beta, both(100.0, 70.0))  # recovering: 2 points to spend would grow it past the cap
    assert beta == pytest.approx(CEILING_FACTOR) and CEILING_FACTOR < 0.5 * MAX_GROWTH
    step(budget, 6, beta, both(100.0, 40.0))  # validation overspent, the training side not: no new ceiling
    assert budget.ceiling == pytest.approx(CEILING_FACTOR)
    step(budget, 7, 0.6, both(40.0, 70.0))  # beta lowered, and the training side collapses: no new cap
    assert budget.ceiling == pytest.approx(CEILING_FACTOR)
    step(budget, 8, 0.3, both(100.0, 70.0))
    step(budget, 9, 0.3, both(100.0, 70.0))  # recovered
    step(budget, 10, 0.6, both(20.0, 70.0))  # raised to 0.6 and collapsed again: the cap falls to 0.7 * 0.6
    step(budget, 11, 0.3, both(70.0, 70.0))  # still collapsed while it recovers: the cap stays
    assert budget.ceiling == pytest.approx(CEILING_FACTOR * 0.6)


def test_beta_stays_within_its_range():
    budget = EmotionBudget(max_loss=10, beta=1.0)
    start(budget, 1.0, both(50.0))
    assert step(budget, 1, BETA_RANGE[1], both(50.0))[0] == BETA_RANGE[1]
    assert step(budget, 2, BETA_RANGE[0], both(0.0))[0] == BETA_RANGE[0]


@pytest.mark.parametrize("loss", [-1, 101])
def test_a_budget_outside_0_to_100_points_is_refused(tiny_config, loss):
    with pytest.raises(ConfigError, match=rf"model.max_emotion_loss={loss} must be between 0 and 100"):
        run(tiny_config("model=hybrid_standardised", f"model.max_emotion_loss={loss}"))


def test_constrained_hybrid_starts_from_its_reference_and_sets_each_rounds_beta_by_the_budget(tiny_config):
    rounds = 4
    cfg = tiny_config("model=hybrid_standardised", "model.max_emotion_loss=2", "model.init_epochs=3",
                      f"model.rounds={rounds}", "model.privacy.refit_epochs=2", "fresh_head.max_epochs=3",
                      "audit.enabled=false")
    metrics = run(cfg)
    client = MlflowClient(tracking_uri(cfg))
    (logged,) = client.search_runs([client.get_experiment_by_name(cfg.logger.experiment_name).experiment_id])

    def history(key):
        return {m.step: m.value for m in client.get_metric_history(logged.info.run_id, key)}

    # One reference per side for every round: the initialisation's emotion over its last epochs.
    emotion = {"train": history("round/emotion_acc/train"), "val": history("round/emotion_expected_acc/val")}
    assert sorted(history(f"{ROUND_BUDGET_SIGNAL}/val")) == list(range(rounds + 1))
    reference = {}
    for side in ("train", "val"):
        (reference[side],) = set(history(f"{ROUND_BUDGET_REFERENCE}/{side}").values())
        assert 0 < reference[side] <= 100
    # Every round's beta is what the controller made of the rounds before it, from the logged readings.
    beta, betas = cfg.model.beta, history(ROUND_BETA)
    budget = EmotionBudget(2, beta=beta, reference=reference, smoothed=dict(reference))
    for round_ in range(1, rounds + 1):
        assert betas[round_] == pytest.approx(beta)
        beta, state = step(budget, round_, beta, {side: emotion[side][round_] for side in emotion})
        assert state[ROUND_BUDGET_SLACK] == pytest.approx(history(ROUND_BUDGET_SLACK)[round_])
    last_within = max(r for r, slack in history(ROUND_BUDGET_SLACK).items() if slack >= 0)
    assert metrics[BUDGET_SHIPPED_ROUND] == (rounds if history(ROUND_BUDGET_SLACK)[rounds] >= 0 else last_within)
    assert "hybrid_rounds.png" in {a.path for a in client.list_artifacts(logged.info.run_id)}
    assert not math.isnan(metrics["Hybrid2Emotion"])


def test_a_model_that_overspent_in_its_last_round_ends_with_the_last_round_within_the_budget(data):
    module = hybrid(data, 1, 5, max_emotion_loss=2)
    start(module.weight, 0.3, both(90.0, 60.0))
    step(module.weight, 1, 0.3, both(90.0, 60.0))
    assert module.weight.kept_its_promise
    module.kept_round = (1, {k: v.clone() for k, v in module.state_dict().items()})
    kept = copy.deepcopy(module.state_dict())
    assert module.restore_last_kept_round() == 5  # the last round was within it: nothing changes
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.add_(1.0)
    step(module.weight, 2, 0.3, both(80.0, 50.0))  # overspent
    assert not module.weight.kept_its_promise
    assert module.restore_last_kept_round() == 1
    assert all(torch.equal(kept[k], v) for k, v in module.state_dict().items())


def test_the_round_figure_draws_a_first_beta_of_0_on_its_beta_axis():
    reading = {round_curve(EMOTION_ACC, "train"): 90.0, round_curve(EXPECTED_EMOTION, "val"): 60.0}
    budget_state = {f"{key}/{side}": value for side, value in (("train", 90.0), ("val", 60.0))
                    for key in (ROUND_BUDGET_REFERENCE, ROUND_BUDGET_SIGNAL)}
    slack = {f"{ROUND_BUDGET_SLACK}/train": 4.0, f"{ROUND_BUDGET_SLACK}/val": 4.0, ROUND_BUDGET_SLACK: 4.0}
    history = [{"round": r, **reading, **budget_state, **slack, **({ROUND_BETA: beta} if r else {})}
               for r, beta in ((0, None), (1, 0.0), (2, 0.3))]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a log scale warns about, and drops, a beta of 0
        figure = round_curves_figure(history, "fold 0")
    (beta_axis,) = [axes for axes in figure.axes if axes.get_ylabel() == "beta"]
    (steps,) = beta_axis.get_lines()
    assert list(steps.get_ydata()) == [0.0, 0.3]
    assert beta_axis.get_yscale() == "symlog" and beta_axis.get_ylim()[0] == 0
