"""The in-training methods (anonemo/models/privacy/) and the weight controllers (anonemo/models/weight.py):
each term does what its paper says, and every term trains under every controller."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from mlflow.tracking import MlflowClient

from anonemo.config import build
from anonemo.errors import ConfigError
from anonemo.job import run
from anonemo.metrics import HEADLINE_TAG, ROUND_BETA, ROUND_BUDGET_SLACK, ROUND_CURVES
from anonemo.models.privacy.gradient_reversal import GradientReversal
from anonemo.models.privacy.hsic import HSICPenalty, hsic
from anonemo.models.privacy.maxent import MaxEntAdversary, entropy_gap
from anonemo.models.privacy.refitted_adversary import RefittedAdversary
from anonemo.models.weight import EmotionBudget, EmotionGuard, FixedWeight
from anonemo.tracking.store import tracking_uri
from test_hybrid import PhaseSnapshots, adversarial_loss, base_gradient, data, fit_with_rounds, hybrid  # noqa: F401


def head_gradient(module, loss):
    module.zero_grad()
    loss.backward()
    return torch.cat([p.grad.flatten() for p in module.identity_heads.parameters()])


@pytest.mark.parametrize("progress", [0.0, 0.3, 1.0])
@pytest.mark.parametrize("schedule", ["constant", "dann"])
def test_gradient_reversal_reverses_exactly_the_identity_gradient(data, schedule, progress):
    """The base receives grad(Le) - beta*lambda*grad(Li) and the head +grad(Li), in one backward pass."""
    torch.manual_seed(0)
    module = hybrid(data, 1, 1, GradientReversal(schedule=schedule), beta=2.5)
    batch = next(iter(data.train_dataloader()))
    reversal = module.privacy.reversal(progress)

    def emotion_loss(b):
        return F.cross_entropy(module.emotion_head(module.base(b["image"])), b["emotion"])

    def identity_loss(b):
        return module.identity_loss(module.base(b["image"]), b["identity"])

    combined = base_gradient(module, lambda b: adversarial_loss(module, b, progress), batch)
    expected = base_gradient(module, emotion_loss, batch) - 2.5 * reversal * base_gradient(module, identity_loss, batch)
    assert torch.allclose(combined, expected, atol=1e-6)
    assert torch.allclose(head_gradient(module, adversarial_loss(module, batch, progress)),
                          head_gradient(module, identity_loss(batch)), atol=1e-6)


def test_the_dann_schedule_ramps_the_reversal_from_0_to_1():
    dann = GradientReversal(schedule="dann")
    ramp = [dann.reversal(p) for p in np.linspace(0, 1, 11)]
    assert ramp[0] == 0 and ramp[-1] == pytest.approx(2 / (1 + math.exp(-10)) - 1) and ramp[-1] > 0.999
    assert all(a < b for a, b in zip(ramp, ramp[1:]))
    assert GradientReversal().reversal(0.0) == 1.0
    with pytest.raises(ConfigError, match="model.privacy.schedule='linear' is not known"):
        GradientReversal(schedule="linear")


def test_the_entropy_term_is_zero_and_flat_at_the_uniform_posterior_and_pushes_towards_it_elsewhere():
    uniform = torch.full((5, 4), 0.7, requires_grad=True)
    gap = entropy_gap(uniform)
    gap.backward()
    assert gap.item() == pytest.approx(0.0, abs=1e-6) and uniform.grad.abs().max().item() < 1e-7
    confident = torch.tensor([[4.0, 0.0, 0.0, 0.0]] * 5, requires_grad=True)
    gap = entropy_gap(confident)
    gap.backward()
    assert gap.item() > 0.5
    assert (confident.grad[:, 0] > 0).all()  # descending the gap lowers the winning logit
    assert entropy_gap(torch.zeros(3, 4)) <= entropy_gap(torch.randn(3, 4))


def test_maxent_trains_its_adversary_on_every_batch_and_the_base_against_it(data):
    """Unlike the paper's frozen head, the MaxEnt adversary learns identity during the rounds (a
    step of its own on each batch), and no re-fit follows a round."""
    torch.manual_seed(0)
    snapshots = PhaseSnapshots()
    module = hybrid(data, 1, 2, MaxEntAdversary())
    history = fit_with_rounds(module, data, [snapshots])
    steps = [(kind, t, changed) for kind, t, changed in snapshots.changes if kind != "refit"]
    assert [(kind, t) for kind, t, _ in steps] == [("init", 0), ("adversarial", 1), ("adversarial", 2)]
    assert all(changed == {"base": True, "emotion_head": True, "identity_heads": True} for _, _, changed in steps)
    nothing = {"base": False, "emotion_head": False, "identity_heads": False}
    assert [changed for kind, _, changed in snapshots.changes if kind == "refit"] == [nothing, nothing]
    assert not any("round/refit_identity_acc/train" in row for row in history)


def direct_hsic(x, labels):
    """tr(K H L H) / (n - 1)^2 written out with numpy, loops for the kernels."""
    def kernel(rows):
        n = len(rows)
        squared = np.array([[np.sum((rows[i] - rows[j]) ** 2) for j in range(n)] for i in range(n)])
        scale = np.median([squared[i, j] for i in range(n) for j in range(n) if i != j])
        return np.exp(-squared / (2 * scale))
    n = len(x)
    codes = np.eye(labels.max() + 1)[labels]
    centring = np.eye(n) - np.ones((n, n)) / n
    return np.trace(kernel(x) @ centring @ kernel(codes) @ centring) / (n - 1) ** 2


def test_hsic_matches_its_direct_computation_and_is_near_zero_for_independent_variables():
    rng = np.random.default_rng(0)
    x, labels = rng.normal(size=(7, 3)), np.array([0, 1, 2, 0, 1, 2, 2])
    assert hsic(torch.tensor(x), F.one_hot(torch.tensor(labels)).double()).item() == pytest.approx(direct_hsic(x, labels), rel=1e-9)
    torch.manual_seed(0)
    identities = torch.randint(0, 10, (400,))
    codes = F.one_hot(identities).float()
    independent = hsic(torch.randn(400, 8), codes).item()
    dependent = hsic(codes[:, :8] * 3 + torch.randn(400, 8), codes).item()
    assert 0 <= independent < 0.1 * dependent
    # the biased estimate's floor shrinks as 1/n: what is left for independent variables is that bias
    assert hsic(torch.randn(4000, 8)[:1600], F.one_hot(torch.randint(0, 10, (1600,))).float()).item() < independent / 2


def test_the_hsic_penalty_is_beta_times_hsic_and_needs_no_identity_head(data):
    module = hybrid(data, 1, 1, HSICPenalty(), beta=0.7)
    assert not len(module.identity_heads) and len(module.configure_optimizers()) == 1
    features, identities = torch.randn(16, 8), torch.arange(16) % 4
    assert module.privacy_loss(features, identities, 0.0).item() == pytest.approx(
        0.7 * hsic(features, F.one_hot(identities).float()).item())


TERMS = {"refitted": RefittedAdversary(refit_epochs=1), "grl": GradientReversal(), "maxent": MaxEntAdversary(),
         "hsic": HSICPenalty()}
WEIGHTS = {"fixed": ({}, FixedWeight), "guard": ({"emotion_guard": 30}, EmotionGuard),
           "budget": ({"max_emotion_loss": 4, "max_init_epochs": 6}, EmotionBudget)}


@pytest.mark.parametrize("weight", WEIGHTS)
@pytest.mark.parametrize("term", TERMS)
def test_every_privacy_term_trains_under_every_weight_controller(data, term, weight):
    options, controller = WEIGHTS[weight]
    torch.manual_seed(0)
    module = hybrid(data, 2, 2, TERMS[term], beta=0.3, **options)
    assert type(module.weight) is controller
    history = fit_with_rounds(module, data)
    assert [row["round"] for row in history] == [0, 1, 2]
    assert all(row[ROUND_BETA] > 0 for row in history[1:])
    assert (ROUND_BUDGET_SLACK in history[-1]) == (weight == "budget")
    identity = "round/identity_acc/train" in history[-1]
    assert identity == (term != "hsic") and ("round/refit_identity_acc/train" in history[-1]) == (term == "refitted")
    assert set(history[-1]) & set(ROUND_CURVES)


SIX_PEOPLE_BUDGET = ("cv.protocol=subject_disjoint", "dataset.num_subjects=6", "cv.n_splits=3",
                     "model.max_emotion_loss=4", "model.max_init_epochs=4")


@pytest.mark.parametrize("unseen_people", [False, True], ids=["paper-fixed-beta", "subject-disjoint-budget"])
@pytest.mark.parametrize(("model", "label"), [("grl", "GRL"), ("maxent", "MaxEnt"), ("hsic", "HSIC")])
def test_each_method_is_a_model_option_whose_metrics_carry_its_label(tiny_config, model, label, unseen_people):
    """Each method runs as a job with a fixed beta under the paper's protocol and within an emotion
    budget for unseen people, and is audited like every other base."""
    cfg = tiny_config(f"model={model}", "model.init_epochs=2", "model.rounds=2", "fresh_head.max_epochs=3",
                      *(SIX_PEOPLE_BUDGET if unseen_people else ["audit.enabled=false"]))
    assert build(cfg.model, "model").label == label
    metrics = run(cfg)
    client = MlflowClient(tracking_uri(cfg))
    (logged,) = client.search_runs([client.get_experiment_by_name(cfg.logger.experiment_name).experiment_id])
    assert "hybrid_rounds.png" in {a.path for a in client.list_artifacts(logged.info.run_id)}
    assert logged.data.tags[HEADLINE_TAG] == f"{label}2Emotion,{label}2Face"
    assert {f"{label}2Emotion", f"{label}/emotion_head"} <= set(metrics)
    if unseen_people:  # no closed-set identity: the linkage audit, and the budget's kept round
        assert 0 <= metrics["audit/linkage/auc"] <= 1 and "budget/shipped_round" in metrics
        assert f"{label}2Face" not in metrics
    else:
        assert f"{label}2Face" in metrics
        assert (f"{label}/identity_head" in metrics) == (model != "hsic")
