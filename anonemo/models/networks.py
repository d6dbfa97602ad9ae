"""The paper's building blocks: a convolutional base (W_c) and fully connected heads (W_e, W_i)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class ConvBase(nn.Module):
    """W_c: three 3x3, stride-1 convolutions, each followed by ReLU and 2x2 max pooling.

    Padding keeps the spatial size through each convolution, so a ``S x S`` input leaves as a
    flat vector of ``channels[-1] * (S // 8) ** 2`` features.
    """

    def __init__(
        self, image_size: int, channels: Sequence[int] = (16, 32, 64), in_channels: int = 1, channels_last: bool = False
    ):
        super().__init__()
        if len(channels) != 3:
            raise ValueError(f"ConvBase has three convolutional layers; got {len(channels)} widths: {list(channels)}")
        layers: list[nn.Module] = []
        for out_channels in channels:
            layers += [nn.Conv2d(in_channels, out_channels, 3, stride=1, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
            in_channels = out_channels
        self.layers = nn.Sequential(*layers, nn.Flatten())
        self.out_features = channels[-1] * (image_size // 8) ** 2
        self.channels_last = channels_last
        if channels_last:
            # On CPU, channels_last convolutions under bf16 autocast were ~2x faster here.
            self.to(memory_format=torch.channels_last)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return self.layers(images)


class ClassifierHead(nn.Module):
    """Three fully connected layers: two ReLU hidden layers and the class scores.

    Returns logits; the paper's softmax output is applied by the cross-entropy loss and by
    ``predict_proba`` callers.
    """

    def __init__(self, in_features: int, num_classes: int, hidden: Sequence[int] = (256, 128), dropout: float = 0.0):
        super().__init__()
        if len(hidden) != 2:
            raise ValueError(f"ClassifierHead has two hidden layers; got {len(hidden)} widths: {list(hidden)}")
        layers: list[nn.Module] = []
        for width in hidden:
            layers += [nn.Linear(in_features, width), nn.ReLU(), nn.Dropout(dropout)]
            in_features = width
        self.layers = nn.Sequential(*layers, nn.Linear(in_features, num_classes))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.layers(features)
