"""The paper's building blocks: a convolutional base (W_c) and fully connected heads (W_e, W_i)."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from anonemo.errors import ConfigError, ModelFileError
from anonemo.probes import Standardiser

FEATURE_NORMS = ("none", "layer")


def erase_affine(features: torch.Tensor, center: torch.Tensor, left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """``features - ((features - center) @ right.T) @ left.T``: identity minus a rank-k map, with
    ``left`` (d, k) and ``right`` (k, d), as LEACE writes its eraser."""
    return features - ((features - center) @ right.T) @ left.T


@dataclass(frozen=True)
class AffineErasure:
    """The erasure's parameters; applied by :func:`erase_affine`."""

    center: torch.Tensor
    left: torch.Tensor
    right: torch.Tensor

    @property
    def rank(self) -> int:
        return self.left.shape[1]

    @classmethod
    def of_standardised(cls, standardiser: Standardiser, center: torch.Tensor, left: torch.Tensor,
                        right: torch.Tensor) -> AffineErasure:
        """The erasure ``(center, left, right)`` of standardised features ``z = (x - mean) / std``
        as the same map on raw features ``x`` (its output back on the raw scale)."""
        mean, std = standardiser.mean.double(), standardiser.std.double()
        return cls((mean + std * center.double()).float(), (std[:, None] * left.double()).float(),
                   (right.double() / std[None, :]).float())

    def __call__(self, features: torch.Tensor) -> torch.Tensor:
        return erase_affine(features, self.center, self.left, self.right)


def check_base_shape(channels: Sequence[int], bottleneck: int, feature_norm: str) -> None:
    if len(channels) != 3:
        raise ConfigError(f"network.conv_channels={list(channels)}: the base has three convolutional layers; give three widths.")
    if feature_norm not in FEATURE_NORMS:
        raise ConfigError(f"network.feature_norm={feature_norm!r} is not known: use one of {', '.join(FEATURE_NORMS)}.")
    if bottleneck < 0:
        raise ConfigError(f"network.bottleneck={bottleneck} must be 0 (none) or a positive number of features.")


class ConvBase(nn.Module):
    """W_c: three 3x3, stride-1 convolutions, each followed by ReLU and 2x2 max pooling.

    Padding keeps the spatial size through each convolution, so a ``S x S`` input leaves as a
    flat vector of ``channels[-1] * (S // 8) ** 2`` features.

    Two options exist for adversarial training (off in the paper's models): ``bottleneck`` > 0
    adds a linear projection to that many features, so that an adversary has fewer directions to
    clean; ``feature_norm="layer"`` normalises each image's feature vector (no learned scale or
    shift), so the base cannot escape the adversary by inflating its activations.

    ``erasure_rank`` > 0: the features leave through a fitted post-hoc erasure of that rank
    (:meth:`with_erasure`, ``anonemo.erasure``), so a saved or exported base carries it.
    """

    __constants__ = ["erases"]  # lets TorchScript drop the erasure branch of a base without one

    def __init__(
        self,
        image_size: int,
        channels: Sequence[int] = (16, 32, 64),
        in_channels: int = 1,
        channels_last: bool = False,
        bottleneck: int = 0,
        feature_norm: str = "none",
        erasure_rank: int = 0,
    ):
        super().__init__()
        # What it takes to rebuild this base from a saved state dict (see save_network).
        self.architecture = {
            "image_size": image_size,
            "channels": list(channels),
            "in_channels": in_channels,
            "bottleneck": bottleneck,
            "feature_norm": feature_norm,
            "erasure_rank": erasure_rank,
            # A saved base is rebuilt in the layout it ran in: the other layout picks other conv
            # kernels, whose features differ in the last bits.
            "channels_last": channels_last,
        }
        check_base_shape(channels, bottleneck, feature_norm)
        layers: list[nn.Module] = []
        for out_channels in channels:
            # Pooling before the ReLU computes exactly ReLU-then-pool (max and ReLU commute, and so
            # do their gradients) with the ReLU on a quarter of the values (docs/performance.md).
            # The layer indices, hence saved state dicts, are the same in either order.
            layers += [nn.Conv2d(in_channels, out_channels, 3, stride=1, padding=1), nn.MaxPool2d(2), nn.ReLU(inplace=True)]
            in_channels = out_channels
        layers.append(nn.Flatten())
        self.out_features = channels[-1] * (image_size // 8) ** 2
        if bottleneck:
            layers.append(nn.Linear(self.out_features, bottleneck))
            self.out_features = bottleneck
        if feature_norm == "layer":
            layers.append(nn.LayerNorm(self.out_features, elementwise_affine=False))
        self.layers = nn.Sequential(*layers)
        self.erases = erasure_rank > 0
        if self.erases:
            self.register_buffer("erasure_center", torch.zeros(self.out_features))
            self.register_buffer("erasure_left", torch.zeros(self.out_features, erasure_rank))
            self.register_buffer("erasure_right", torch.zeros(erasure_rank, self.out_features))
        self.channels_last = channels_last
        if channels_last:
            # channels_last convolutions are faster on CPU under bf16 autocast (docs/performance.md).
            self.to(memory_format=torch.channels_last)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        features = self.layers(images)
        if self.erases:
            features = erase_affine(features, self.erasure_center, self.erasure_left, self.erasure_right)
        return features

    @torch.no_grad()
    def with_erasure(self, erasure: AffineErasure) -> ConvBase:
        """A copy of this base (without an erasure) whose features leave through ``erasure``."""
        if self.erases:
            raise ValueError("this base erases already; fit the erasure on the features of the base without it")
        if erasure.rank == 0:  # nothing to erase (INLP's first probe was at chance already)
            return copy.deepcopy(self)
        erased = ConvBase(**{**self.architecture, "erasure_rank": erasure.rank})
        erased.load_state_dict({**self.state_dict(), "erasure_center": erasure.center, "erasure_left": erasure.left,
                                "erasure_right": erasure.right})
        return erased.train(self.training)


class ClassifierHead(nn.Module):
    """Fully connected ReLU hidden layers of widths ``hidden``, then the class scores.

    The paper's heads have two hidden layers (three FC layers in all); adversarial identity heads
    may have other widths or none (a linear head). Returns logits; the paper's softmax output is
    applied by the cross-entropy loss and by ``predict_proba`` callers.

    ``standardise``: the head reads its inputs standardised per feature with the training side's
    statistics (:meth:`set_input_statistics`), as the audit's attackers do. The map is affine, so
    the head can represent the same functions as on raw inputs; what changes is whether Adam finds
    them: on adversarially trained bases, raw-input heads barely rose above chance on the training
    side where standardised ones read the label (docs/algorithm.md, "Fresh heads").
    The statistics are buffers, so saved heads and exported models carry them.
    """

    __constants__ = ["standardise"]  # lets TorchScript drop the branch a head does not use

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        hidden: Sequence[int] = (256, 128),
        dropout: float = 0.0,
        standardise: bool = False,
    ):
        super().__init__()
        self.architecture = {
            "in_features": in_features,
            "num_classes": num_classes,
            "hidden": list(hidden),
            "dropout": dropout,
            "standardise": standardise,
        }
        self.standardise = standardise
        if standardise:
            self.register_buffer("input_mean", torch.zeros(in_features))
            self.register_buffer("input_std", torch.ones(in_features))
        layers: list[nn.Module] = []
        for width in hidden:
            layers += [nn.Linear(in_features, width), nn.ReLU(), nn.Dropout(dropout)]
            in_features = width
        self.layers = nn.Sequential(*layers, nn.Linear(in_features, num_classes))

    @torch.no_grad()
    def set_input_statistics(self, train_features: torch.Tensor) -> None:
        """Standardise inputs with the per-feature mean and spread of ``train_features``."""
        if not self.standardise:
            raise ValueError("set_input_statistics needs a head built with standardise=True")
        statistics = Standardiser(train_features.float())
        self.input_mean.copy_(statistics.mean)
        self.input_std.copy_(statistics.std)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if self.standardise:
            features = (features - self.input_mean) / self.input_std
        return self.layers(features)


@dataclass(frozen=True)
class Networks:
    """The configured shapes (``conf/network``): every model's conv base and FC heads come from here,
    so one fold's numbers are comparable across models."""

    image_size: int
    conv_channels: Sequence[int] = (16, 32, 64)
    bottleneck: int = 0
    feature_norm: str = "none"
    fc_hidden: Sequence[int] = (256, 128)
    dropout: float = 0.3
    channels_last: bool = True

    def __post_init__(self) -> None:
        check_base_shape(self.conv_channels, self.bottleneck, self.feature_norm)

    def base(self) -> ConvBase:
        return ConvBase(self.image_size, tuple(self.conv_channels), channels_last=self.channels_last,
                        bottleneck=self.bottleneck, feature_norm=self.feature_norm)

    def feature_directions(self) -> int:
        """How many directions the base's features can vary in (layer norm fixes their mean)."""
        features = self.bottleneck or self.conv_channels[-1] * (self.image_size // 8) ** 2
        return features - (self.feature_norm == "layer")

    def head(self, in_features: int, num_classes: int, hidden: Sequence[int] | None = None,
             standardise: bool = False) -> ClassifierHead:
        """A head of the configured shape (or of ``hidden`` widths) on ``in_features`` inputs."""
        hidden = tuple(self.fc_hidden) if hidden is None else tuple(hidden)
        return ClassifierHead(in_features, num_classes, hidden, self.dropout, standardise=standardise)


class EmotionModel(nn.Module):
    """The anonymising encoder W_c with an emotion head: what ``anonemo.export`` ships.

    ``forward`` maps ``(N, 1, S, S)`` images in [0, 1] (see ``ImagePreprocessor``) to emotion
    probabilities; ``encode`` to the encoder's features, the representation the audit measured.
    It holds no identity head.
    """

    def __init__(self, base: ConvBase, head: ClassifierHead):
        super().__init__()
        self.base, self.head = base, head

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.base(images)).softmax(1)

    @torch.jit.export
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return self.base(images)


def save_network(network: ConvBase | ClassifierHead, path: Path, **extra: object) -> None:
    """Architecture, weights and ``extra`` plain values, in a file :func:`load_network` reads."""
    payload = {"format": FORMATS[type(network)], "architecture": network.architecture, "state_dict": network.state_dict()}
    torch.save(payload | extra, path)


def load_network(path: Path, kind: type[ConvBase] | type[ClassifierHead]) -> tuple[nn.Module, dict]:
    """A network of ``kind`` saved by :func:`save_network` (on the CPU, in eval mode) and the
    file's whole payload.

    Loaded with ``weights_only=True``: a file can carry tensors and plain values, never code.
    """
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # unpickling and zip errors come in many classes
        raise ModelFileError(f"{path} is not a readable anonemo model file ({type(error).__name__}: {error}).") from error
    if not isinstance(payload, dict) or payload.get("format") != FORMATS[kind]:
        raise ModelFileError(f"{path} is not an anonemo {kind.__name__} file (expected format {FORMATS[kind]}).")
    network = kind(**payload["architecture"])
    try:
        network.load_state_dict(payload["state_dict"])
    except RuntimeError as error:
        raise ModelFileError(
            f"{path}: its weights do not fit the architecture it declares ({payload['architecture']}): {error}"
        ) from error
    return network.eval(), payload


def load_base(path: Path) -> ConvBase:
    """The conv base in a file written by :func:`save_network`."""
    return load_network(path, ConvBase)[0]


FORMATS = {ConvBase: "anonemo.ConvBase/1", ClassifierHead: "anonemo.ClassifierHead/1"}
