"""Networks used in the paper and in the comparisons that go beyond it."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["BaselineCNN"]


class BaselineCNN(nn.Module):
    """The paper's baseline CNN (section 3.1), the TensorFlow CIFAR-10 tutorial network.

    Conv(32, 3x3) - MaxPool(2) - Conv(64, 3x3) - MaxPool(2) - Conv(64, 3x3) -
    Flatten - Dense(64) - Dense(num_classes), ReLU after every hidden layer,
    valid (unpadded) convolutions as in Keras: 122,570 parameters for 10 classes.
    The softmax of the Keras model lives in the loss (``nn.CrossEntropyLoss``).
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 32, kernel_size=3),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, kernel_size=3),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(64, 64, kernel_size=3),
            nn.ReLU(inplace=True),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(64 * 4 * 4, 64),
            nn.ReLU(inplace=True),
            nn.Linear(64, num_classes),
        )
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Keras defaults, as in the paper: Glorot-uniform kernels, zero biases."""
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))
