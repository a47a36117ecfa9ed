"""Trains and exports mnist-relu: a conventional ReLU + max-pool CNN, trained without HE in mind.

It is the input for the converter's ReLU approximation and max-pool replacement, so that we can
measure what conversion costs against the HE-friendly mnist-cnn.

    input 1x28x28
    conv1 3x3, 1 -> 16, padding 1 -> ReLU -> MaxPool 2x2   -> 16 x 14 x 14
    conv2 3x3, 16 -> 32, padding 1 -> ReLU -> MaxPool 2x2  -> 32 x 7 x 7
    fc1   Linear(1568 -> 128) -> ReLU (dropout 0.25 in training only)
    fc2   Linear(128 -> 10)

    nice -n 10 python training/train_mnist_relu.py
"""

from collections import OrderedDict

import torch
from torch import nn

import common

NAME, DATASET, SCRIPT, EPOCHS = "mnist-relu", "mnist", "train_mnist_relu.py", 10


def build() -> nn.Sequential:
    return nn.Sequential(
        OrderedDict(
            conv1=nn.Conv2d(1, 16, 3, padding=1),
            act1=nn.ReLU(),
            pool1=nn.MaxPool2d(2),
            conv2=nn.Conv2d(16, 32, 3, padding=1),
            act2=nn.ReLU(),
            pool2=nn.MaxPool2d(2),
            flatten=nn.Flatten(),
            fc1=nn.Linear(32 * 7 * 7, 128),
            act3=nn.ReLU(),
            drop=nn.Dropout(0.25),
            fc2=nn.Linear(128, 10),
        )
    )


HE = {
    "friendly": False,
    "activation": "ReLU, MaxPool 2x2",
    "multiplicative_depth": None,
    "multiplicative_depth_folded": None,
    "depth_breakdown": [],
    "rotations": (
        "Not runnable under CKKS as trained: Relu and MaxPool are not polynomials. The converter replaces "
        "each Relu by a polynomial approximation on the interval given by activation_input_bounds and each "
        "MaxPool by AveragePool or a polynomial max; a degree-d polynomial costs about ceil(log2(d + 1)) "
        "levels, so with 3 Relu, 2 MaxPool and 4 linear layers the converted depth is far above the "
        "HE-friendly models' 5 to 6 (4 linear layers + 3 ReLU approximations of 4 to 5 levels each + 2 pools "
        "replaced by AveragePool: about 18 to 21 levels, i.e. N=2^15 or bootstrapping). conv2 has 16 input channels, so on top of its 9 tap rotations it needs "
        "channel-mixing rotations (unlike mnist-cnn, whose only conv has one input channel)."
    ),
    "ring": "none as trained; see rotations",
}


def main() -> None:
    args = common.parse_args(EPOCHS)
    common.setup(args["seed"])
    data = common.load_dataset(DATASET)
    mean, std = common.normalization(data["train_x"])
    x = common.to_input(data["train_x"], mean, std)
    y = torch.from_numpy(data["train_y"])
    test = (common.to_input(data["test_x"], mean, std), torch.from_numpy(data["test_y"]))
    model = build()
    hp = {"epochs": args["epochs"], "lr": 2e-3, "batch": 128, "max_shift": 1}
    common.log(f"{NAME}: {DATASET}, {len(y)} training images, mean {mean} std {std}, {hp}")
    common.train(model, x, y, seed=args["seed"], test=test, **hp)
    if args["no_export"]:
        common.log(f"test accuracy {common.evaluate(model, *test):.4f} (not exported)")
        return
    extra = "" if args["epochs"] == EPOCHS else f" --epochs {args['epochs']}"
    extra += "" if args["seed"] == 1 else f" --seed {args['seed']}"
    common.finish(
        name=NAME,
        dataset=DATASET,
        model=model,
        data=data,
        mean=mean,
        std=std,
        command=f"nice -n 10 python training/{SCRIPT}{extra}",
        training={
            "seed": args["seed"],
            "train_images": int(len(y)),
            "optimizer": "AdamW (no weight decay), one-cycle learning rate",
            "augmentation": "random shifts of up to 1 pixel",
            "threads": 1,
            "torch": torch.__version__,
            **hp,
        },
        he=HE,
        activation_kinds=(nn.ReLU, nn.MaxPool2d),
        description=(
            "Conventional CNN: Conv 3x3 (1->16) -> ReLU -> MaxPool -> Conv 3x3 (16->32) -> ReLU -> MaxPool "
            "-> Gemm (1568->128) -> ReLU -> Gemm (128->10)"
        ),
    )


if __name__ == "__main__":
    main()
