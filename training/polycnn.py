"""The HE-friendly CNN shared by mnist-cnn and fashion-cnn, and its CKKS cost notes.

    input 1x28x28
    conv1  5x5, 1 -> C channels, stride 1, no padding   -> C x 24 x 24   (+ BatchNorm, folded)
    act1   x^2
    pool1  AveragePool 2x2, stride 2                      -> C x 12 x 12
    fc1    Linear(C*144 -> H)                                             (+ BatchNorm, folded)
    act2   x^2
    fc2    Linear(H -> 10)

Why this shape, for CKKS at N=2^13 or 2^14 (see training/README.md):
- Depth: Conv, x^2, AveragePool, Gemm, x^2, Gemm = 6 levels counting every node; AveragePool and
  fc1 are both linear, so a compiler that merges them runs it in 5.
- Rotations: the only convolution has ONE input channel and stride 1, so its 25 taps are rotations of
  the input ciphertext by dy*28+dx, shared by every output channel (no channel-mixing rotations, no
  strided repacking). The dense layers have few outputs (H, then 10), hence few diagonals.
- x^2 is the cheapest non-linearity (one ciphertext multiplication); BatchNorm before each square
  keeps its inputs near [-1, 1]-ish during training, which is what makes pure x^2 train stably.
"""

from collections import OrderedDict

import torch
from torch import nn

import common


def build(channels: int, hidden: int) -> nn.Sequential:
    return nn.Sequential(
        OrderedDict(
            conv1=nn.Conv2d(1, channels, 5, stride=1, padding=0),
            bn1=nn.BatchNorm2d(channels),
            act1=common.Square(),
            pool1=nn.AvgPool2d(2),
            flatten=nn.Flatten(),
            fc1=nn.Linear(channels * 12 * 12, hidden),
            bn2=nn.BatchNorm1d(hidden),
            act2=common.Square(),
            fc2=nn.Linear(hidden, 10),
        )
    )


def he_info(channels: int, hidden: int) -> dict:
    blocks = channels * 1024  # one 1024-slot block per channel (24 rows at a 28-slot stride fit)
    cts13, cts14 = max(1, blocks // 4096), max(1, blocks // 8192)
    return {
        "friendly": True,
        "activation": "x^2 (ONNX Mul(x, x)) after a BatchNorm folded into the preceding Conv/Gemm",
        "multiplicative_depth": 6,
        "multiplicative_depth_folded": 5,
        "depth_breakdown": [
            "Conv 5x5 (plaintext weights): 1",
            "x^2: 1",
            "AveragePool 2x2 (plaintext 1/4): 1",
            f"Gemm {channels * 144}->{hidden} (plaintext weights): 1",
            "x^2: 1",
            f"Gemm {hidden}->10 (plaintext weights): 1",
        ],
        "rotations": (
            f"Conv: one input channel, stride 1: with the 28x28 image packed row-major (row stride 28) "
            f"and replicated by the client into one 1024-slot block per output channel, each of the 25 "
            f"taps is one rotation of the input by dy*28+dx (24 non-zero amounts, hoistable: one key-switch "
            f"decomposition), shared by all {channels} channels; no channel-mixing rotations. "
            f"x^2: none. AveragePool: none if merged into the first Gemm (recommended; the pooled values "
            f"stay in place with gaps), else 3 (by 1, 28, 29). "
            f"Gemm {channels * 144}->{hidden} over the gapped layout ({blocks} slots: {cts14} ciphertext(s) "
            f"at N=2^14, {cts13} at N=2^13) by the diagonal method: {hidden} diagonals with "
            f"baby-step/giant-step (about 2*sqrt({hidden}) rotations) plus log2(slots/{hidden}) rotate-and-sum "
            f"steps. Gemm {hidden}->10: about 2*sqrt(16) rotations plus log2({hidden}/16) sums. "
            f"Order of magnitude: 50 to 60 rotations per image, about 45 distinct rotation keys; the compiler "
            f"derives the exact minimal set."
        ),
        "ring": (
            "N=2^14 (438-bit budget) runs depth 6 with 40-bit scales; N=2^13 (218 bits) runs the merged "
            "depth 5 with about 26-bit scales (e.g. 36 + 5x26 + 36-bit special prime = 202 bits)"
        ),
    }


def run(*, name: str, dataset: str, channels: int, hidden: int, default_epochs: int, script: str) -> None:
    args = common.parse_args(default_epochs)
    common.setup(args["seed"])
    data = common.load_dataset(dataset)
    mean, std = common.normalization(data["train_x"])
    x = common.to_input(data["train_x"], mean, std)
    y = torch.from_numpy(data["train_y"])
    test = (common.to_input(data["test_x"], mean, std), torch.from_numpy(data["test_y"]))
    model = build(channels, hidden)
    hp = {"epochs": args["epochs"], "lr": 3e-3, "batch": 128, "max_shift": 1}
    common.log(f"{name}: {dataset}, {len(y)} training images, mean {mean} std {std}, {hp}")
    common.train(model, x, y, seed=args["seed"], test=test, **hp)
    if args["no_export"]:
        common.log(f"test accuracy {common.evaluate(model, *test):.4f} (not exported)")
        return
    extra = "" if args["epochs"] == default_epochs else f" --epochs {args['epochs']}"
    extra += "" if args["seed"] == 1 else f" --seed {args['seed']}"
    common.finish(
        name=name,
        dataset=dataset,
        model=model,
        data=data,
        mean=mean,
        std=std,
        command=f"nice -n 10 python training/{script}{extra}",
        training={
            "seed": args["seed"],
            "train_images": int(len(y)),
            "optimizer": "AdamW (no weight decay), one-cycle learning rate",
            "augmentation": "random shifts of up to 1 pixel",
            "threads": 1,
            "torch": torch.__version__,
            **hp,
        },
        he=he_info(channels, hidden),
        activation_kinds=(common.Square,),
        description=(
            f"HE-friendly CNN: Conv 5x5 (1->{channels}) -> x^2 -> AvgPool 2x2 -> Gemm "
            f"({channels * 144}->{hidden}) -> x^2 -> Gemm ({hidden}->10); BatchNorm folded"
        ),
    )
