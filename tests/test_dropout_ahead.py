"""Dropout masks drawn ahead (anonemo.dropout_ahead) change no number: the Hybrid's three identity
heads trained as the re-fit trains them, with nn.Dropout drawing and with the masks drawn ahead
(inline and on a helper thread), end with the same weights and leave the generator in the same state."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from anonemo.dropout_ahead import masks_drawn_ahead
from anonemo.models.networks import ClassifierHead
from anonemo.optim import adam

FEATURES, CLASSES = 8, 15


def identity_heads() -> nn.ModuleList:
    torch.manual_seed(1)
    heads = nn.ModuleList(ClassifierHead(FEATURES, CLASSES, hidden, dropout=0.3, standardise=True)
                          for hidden in ((256, 128), (), (1024, 512)))
    return heads.train()


def refit(helper_thread: bool | None, bf16: bool, seed: int = 7) -> tuple[nn.ModuleList, torch.Tensor]:
    """Three passes over 150 features in batches of 64 (the last one short), as HybridModule.refit_identity_heads;
    ``helper_thread=None``: nn.Dropout draws its own masks. The heads and the generator's state after."""
    features = torch.randn(150, FEATURES, generator=torch.Generator().manual_seed(2))
    identities = torch.arange(150) % CLASSES
    heads = identity_heads()
    for head in heads:
        head.set_input_statistics(features)
    optimizer = adam(heads.parameters(), lr=1e-3, weight_decay=1e-4)
    generator = torch.Generator().manual_seed(3)
    batches = [batch for _ in range(3) for batch in torch.randperm(150, generator=generator).split(64)]

    def loss_of(batch):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            return torch.stack([F.cross_entropy(head(features[batch]), identities[batch]) for head in heads]).mean()

    def train():
        for batch in batches:
            optimizer.zero_grad()
            loss_of(batch).backward()
            optimizer.step()

    torch.manual_seed(seed)
    if helper_thread is None:
        train()
    else:
        with masks_drawn_ahead(heads, loss_of, batches, helper_thread):
            train()
    return heads, torch.random.get_rng_state()


@pytest.mark.parametrize("bf16", [False, True], ids=["float32", "bf16-autocast"])
@pytest.mark.parametrize("helper_thread", [False, True], ids=["inline", "helper-thread"])
def test_masks_drawn_ahead_train_the_same_heads_and_leave_the_same_generator_state(helper_thread, bf16):
    reference, reference_state = refit(None, bf16)
    heads, state = refit(helper_thread, bf16)
    assert torch.equal(state, reference_state)
    for expected, got in zip(reference.state_dict().values(), heads.state_dict().values(), strict=True):
        assert torch.equal(expected, got)
    assert all(module.training for module in heads.modules())  # the dropouts are back in training mode
    assert not any(module._forward_hooks for module in heads.modules())
    other_masks, _ = refit(None, bf16, seed=8)  # the masks matter: other masks, other weights
    assert not torch.equal(other_masks[2].layers[0].weight, heads[2].layers[0].weight)


def test_a_forward_that_calls_its_dropouts_otherwise_than_traced_is_refused():
    heads = identity_heads()
    features = torch.randn(100, FEATURES)
    batches = list(torch.arange(100).split(50))
    calls = iter([[0, 1, 2], [0, 1, 2], [2, 1, 0]])  # traced with all heads, then in another order

    def logits(batch):
        return [heads[index](features[batch]) for index in next(calls)]

    with pytest.raises(RuntimeError, match="otherwise than the traced pass"):
        with masks_drawn_ahead(heads, logits, batches, helper_thread=True):
            for batch in batches:
                logits(batch)


def test_a_forward_that_draws_other_random_numbers_is_refused():
    heads = identity_heads()
    features = torch.randn(100, FEATURES)

    def noisy(batch):
        return heads[0](features[batch] + torch.randn(len(batch), FEATURES))

    with pytest.raises(RuntimeError, match="draws random numbers besides its dropout masks"):
        with masks_drawn_ahead(heads, noisy, list(torch.arange(100).split(50)), helper_thread=False):
            pass


def test_fewer_passes_than_batches_are_refused():
    heads = identity_heads()
    features = torch.randn(100, FEATURES)
    batches = list(torch.arange(100).split(50))
    with pytest.raises(RuntimeError, match="fewer forward passes than batches"):
        with masks_drawn_ahead(heads, lambda batch: heads[0](features[batch]), batches, helper_thread=True):
            heads[0](features[batches[0]])
