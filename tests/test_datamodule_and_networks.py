"""The LightningDataModule's batches and the networks' shapes."""

import functools

import numpy as np
import pytest
import torch

from anonemo.data.augment import Augmentation
from anonemo.data.datamodule import GroupedFoldDataModule
from anonemo.data.preprocess import FaceCropper, preprocess
from anonemo.data.synthetic import SyntheticFaces
from anonemo.models.networks import ClassifierHead, ConvBase, Networks
from anonemo.optim import adam
from anonemo.models.classifiers import SingleTaskModule


@pytest.fixture(scope="module")
def faces():
    originals = preprocess(SyntheticFaces(num_subjects=4, num_emotions=3, images_per_cell=4).load(), FaceCropper("none"), 32)
    return Augmentation(total=200, seed=0).apply(originals)


def test_batches_are_dicts_of_scaled_images_and_both_labels(faces):
    dm = GroupedFoldDataModule(faces, fold=1, n_splits=4, val_fraction=0.25, batch_size=16)
    assert (dm.num_classes("identity"), dm.num_emotions) == (4, 3)
    assert dm.emotion_names == ("neutral", "happy", "sad")
    batch = next(iter(dm.train_dataloader()))
    assert set(batch) == {"image", "emotion", "identity", "source", "group", "original"}
    assert batch["image"].shape == (16, 1, 32, 32) and batch["image"].dtype == torch.float32
    assert 0 <= batch["image"].min() and batch["image"].max() <= 1
    test = torch.cat([b["image"] for b in dm.test_dataloader()])
    expected = torch.as_tensor(faces.images[dm.split.test]).float().div(255).unsqueeze(1)
    assert torch.equal(test, expected)  # the test loader serves exactly the test side, in order
    assert torch.equal(dm.labels("test", "identity"), torch.as_tensor(faces.subjects[dm.split.test]))
    sources = torch.cat([b["source"] for b in dm.test_dataloader()])
    assert torch.equal(sources, torch.as_tensor(faces.sources[dm.split.test]))
    groups = torch.cat([b["group"] for b in dm.test_dataloader()])
    assert torch.equal(groups, torch.as_tensor(faces.source_groups[faces.sources[dm.split.test]]))
    # an original is the photograph itself, not a copy: the originals come first in the records
    original = torch.cat([b["original"] for b in dm.test_dataloader()])
    assert torch.equal(original, torch.as_tensor(dm.split.test < len(faces.source_names)))
    assert original.sum() == len(np.unique(faces.sources[dm.split.test]))


def test_training_order_is_reproducible_for_a_seed(faces):
    def first_epoch_labels(seed):
        dm = GroupedFoldDataModule(faces, fold=0, n_splits=4, val_fraction=0.25, batch_size=8, seed=seed)
        return torch.cat([b["emotion"] for b in dm.train_dataloader()])

    assert torch.equal(first_epoch_labels(3), first_epoch_labels(3))
    assert not torch.equal(first_epoch_labels(3), first_epoch_labels(4))


@pytest.mark.parametrize("size", [8, 36, 64])
def test_conv_base_feature_count_matches_its_output(size):
    base = ConvBase(size, (4, 8, 16))
    features = base(torch.zeros(2, 1, size, size))
    assert features.shape == (2, base.out_features)
    assert len([m for m in base.modules() if isinstance(m, torch.nn.Conv2d)]) == 3
    assert all(m.kernel_size == (3, 3) and m.stride == (1, 1) for m in base.modules() if isinstance(m, torch.nn.Conv2d))


def test_classifier_head_has_three_fully_connected_layers():
    head = ClassifierHead(20, 5, (8, 6))
    assert [m.out_features for m in head.modules() if isinstance(m, torch.nn.Linear)] == [8, 6, 5]
    assert head(torch.zeros(3, 20)).shape == (3, 5)


def identity_cnn(dropout: float) -> SingleTaskModule:
    networks = Networks(image_size=32, conv_channels=(8, 16, 16), fc_hidden=(64, 32), dropout=dropout)
    base = networks.base()
    return SingleTaskModule(base, networks.head(base.out_features, 4), "identity",
                            functools.partial(adam, lr=3e-3, weight_decay=1e-4))


def test_single_task_module_can_overfit_one_batch_of_its_task(faces):
    """The standard sanity check: from chance-level loss, repeated steps on one batch fit it."""
    torch.manual_seed(0)
    dm = GroupedFoldDataModule(faces, fold=0, n_splits=4, val_fraction=0.25, batch_size=32)
    batch = next(iter(dm.train_dataloader()))
    module = identity_cnn(dropout=0.0)
    optimizer = module.configure_optimizers()
    losses = []
    for _ in range(60):
        loss = torch.nn.functional.cross_entropy(module(batch["image"]), batch["identity"])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.2 * losses[0]
    assert np.isclose(losses[0], np.log(4), atol=0.3)  # starts near chance


def test_epoch_metrics_are_the_whole_epochs_values(faces):
    """Metrics accumulate per step and are logged once per epoch: after an epoch, val/acc and
    val/loss are exactly those of the final weights over the whole validation side."""
    import pytorch_lightning as pl
    import torch.nn.functional as F

    torch.manual_seed(0)
    dm = GroupedFoldDataModule(faces, fold=0, n_splits=4, val_fraction=0.25, batch_size=16)
    module = identity_cnn(dropout=0.3)
    trainer = pl.Trainer(max_epochs=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, num_sanity_val_steps=0)
    trainer.fit(module, datamodule=dm)
    val = dm.side("val").tensors
    module.eval()
    with torch.no_grad():
        logits = module(val["image"])
    logged = trainer.callback_metrics
    expected_acc = (logits.argmax(1) == val["identity"]).float().mean()
    assert 0 < expected_acc < 1  # a value the logging could get wrong
    assert logged["val/acc"] == pytest.approx(expected_acc.item(), abs=1e-6)
    assert logged["val/loss"] == pytest.approx(F.cross_entropy(logits, val["identity"]).item(), rel=1e-4)
    assert {"train/acc", "train/loss", "train/macro_f1", "val/macro_f1"} <= set(logged)


def test_epoch_mean_weights_by_batch_size_and_keeps_a_nan_loss():
    """A diverged step must show in the epoch's loss, not be averaged away."""
    from anonemo.models.classifiers import EpochMean

    mean = EpochMean()
    mean.update(torch.tensor(1.0), 16)
    mean.update(torch.tensor(3.0), 2)
    assert mean.compute() == pytest.approx(22 / 18)  # weighted by batch size
    mean.update(torch.tensor(float("nan")), 4)
    assert torch.isnan(mean.compute())


def test_conv_base_computes_the_papers_conv_relu_pool_exactly():
    """The base pools before its ReLU for speed; outputs and gradients equal conv -> ReLU -> pool."""
    torch.manual_seed(0)
    base = ConvBase(32, (4, 8, 16))
    images = torch.randn(3, 1, 32, 32)

    def reference(x):
        for conv in (m for m in base.layers if isinstance(m, torch.nn.Conv2d)):
            x = torch.nn.functional.max_pool2d(torch.relu(conv(x)), 2)
        return x.flatten(1)

    expected = reference(images)
    expected.square().sum().backward()
    expected_grad = base.layers[0].weight.grad.clone()
    base.zero_grad()
    actual = base(images)
    actual.square().sum().backward()
    assert torch.equal(actual, expected)
    assert torch.allclose(base.layers[0].weight.grad, expected_grad, rtol=1e-6, atol=1e-7)
