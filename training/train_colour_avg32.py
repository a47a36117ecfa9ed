"""Trains a colour CNN with average pooling on the synthetic 32x32 RGB textures of train_colour_cnn.py.

The same data, training and package layout as colour-cnn (see train_colour_cnn.py), with a network
a user would write when told that every max-pool and every ReLU costs levels under homomorphic
encryption: two convolution stages with average pooling, then a global average pool:

    input 3x32x32
    conv1 3x3, 3 -> 16, padding 1  -> BatchNorm -> ReLU -> AvgPool 2x2   -> 16 x 16 x 16
    conv2 3x3, 16 -> 32, padding 1 -> BatchNorm -> ReLU -> AvgPool 2x2   -> 32 x 8 x 8
    AdaptiveAvgPool2d(1) -> Flatten -> Linear(32 -> 8)

Output: crates/cli/tests/packages/colour-avg32/ (model.json, model.onnx, 32 calibration PNGs, the
first 100 synthetic test images with test/labels.txt, TRAINING.json).

    nice -n 10 python training/train_colour_avg32.py [--epochs N] [--seed S] [--no-export]
"""

from __future__ import annotations

import sys
from collections import OrderedDict

from torch import nn

import train_colour_cnn as textures


def build() -> nn.Sequential:
    return nn.Sequential(
        OrderedDict(
            conv1=nn.Conv2d(3, 16, 3, padding=1),
            bn1=nn.BatchNorm2d(16),
            act1=nn.ReLU(),
            pool1=nn.AvgPool2d(2),
            conv2=nn.Conv2d(16, 32, 3, padding=1),
            bn2=nn.BatchNorm2d(32),
            act2=nn.ReLU(),
            pool2=nn.AvgPool2d(2),
            gap=nn.AdaptiveAvgPool2d(1),
            flatten=nn.Flatten(),
            fc=nn.Linear(32, len(textures.LABELS)),
        )
    )


if __name__ == "__main__":
    sys.exit(
        textures.main(
            name="colour-avg32",
            script="train_colour_avg32.py",
            epochs=12,
            build=build,
            description="Small colour CNN (Conv-BN-ReLU-AvgPool x2, global average pool, Linear)",
        )
    )
