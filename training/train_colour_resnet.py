"""Trains a small residual colour CNN on the synthetic 32x32 RGB textures of train_colour_cnn.py.

The same data, training and package layout as colour-cnn (see train_colour_cnn.py), with the
network shape of a ResNet: a stem, then one downsampling basic block whose shortcut is a strided
1x1 convolution with BatchNorm, exported by the stock torch.onnx.export as a graph with a residual
Add of two branches:

    input 3x32x32
    stem  conv 3x3, 3 -> 16, padding 1 -> BatchNorm -> ReLU -> AvgPool 2x2        -> 16 x 16 x 16
    block conv 3x3, 16 -> 32, stride 2 -> BatchNorm -> ReLU -> conv 3x3 -> BatchNorm
          + shortcut conv 1x1, 16 -> 32, stride 2 -> BatchNorm
          -> ReLU                                                                 -> 32 x 8 x 8
    AdaptiveAvgPool2d(1) -> Flatten -> Linear(32 -> 8)

Output: crates/cli/tests/packages/colour-resnet/ (model.json, model.onnx, 32 calibration PNGs, the
first 100 synthetic test images with test/labels.txt, TRAINING.json).

    nice -n 10 python training/train_colour_resnet.py [--epochs N] [--seed S] [--no-export]
"""

from __future__ import annotations

import sys

import torch
from torch import nn

import train_colour_cnn as textures


class BasicBlock(nn.Module):
    """A ResNet basic block with a projection shortcut (torchvision's layout)."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = nn.Sequential(
            nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.downsample(x))


class ColourResNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1, bias=False),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.AvgPool2d(2),
        )
        self.block = BasicBlock(16, 32, stride=2)
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(32, len(textures.LABELS))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.gap(self.block(self.stem(x))), 1))


if __name__ == "__main__":
    sys.exit(
        textures.main(
            name="colour-resnet",
            script="train_colour_resnet.py",
            epochs=12,
            build=ColourResNet,
            description="Small residual colour CNN (stem Conv-BN-ReLU-AvgPool, one ResNet basic "
            "block with a strided 1x1 projection shortcut, global average pool, Linear)",
        )
    )
