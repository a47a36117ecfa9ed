"""Trains colour-shapes, a small conventional colour CNN, and writes it as a model package.

No colour image data set installs offline on this machine kind (no CIFAR/SVHN package ships its
images; see ../README.md), so the data are **synthetic** and generated here, deterministically:
32x32 RGB images of one shape (circle, square or triangle) in one colour family (red, green or
blue) on a noisy grey background, with random position, size, hue jitter and brightness. The nine
classes are colour x shape, so the network must use its colour channels. It is a stock PyTorch
network with BatchNorm, ReLU and MaxPool, exported by torch.onnx.export as a user would:

    input 3x32x32
    conv1 3x3, 3 -> 8, padding 1 -> BatchNorm -> ReLU -> MaxPool 2x2   -> 8 x 16 x 16
    conv2 3x3, 8 -> 16, padding 1 -> BatchNorm -> ReLU -> MaxPool 2x2  -> 16 x 8 x 8
    fc    Linear(1024 -> 9)

Output: the package directory models/colour-shapes/ (model.json, model.onnx, 64 calibration
PNGs, 90 labelled test PNGs), the format of docs/formats.md section 9.

    nice -n 10 python training/train_colour_shapes.py [--epochs N] [--seed S]
"""

from __future__ import annotations

import json
import sys
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import nn

import common

NAME = "colour-shapes"
PACKAGE = common.MODELS_DIR / NAME
COLOURS = {"red": 0.0, "green": 1.0 / 3.0, "blue": 2.0 / 3.0}
SHAPES = ["circle", "square", "triangle"]
LABELS = [f"{c}_{s}" for c in COLOURS for s in SHAPES]
SIDE = 32
TRAIN, TEST, CALIBRATION, TEST_PNG = 18_000, 2_700, 64, 90
MEAN, STD = [0.5, 0.5, 0.5], [0.25, 0.25, 0.25]


def hsv_to_rgb(h: float, s: float, v: float) -> tuple[int, int, int]:
    i = int(h * 6.0) % 6
    f = h * 6.0 - int(h * 6.0)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    r, g, b = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i]
    return int(r * 255), int(g * 255), int(b * 255)


def draw(label: int, rng: np.random.Generator) -> np.ndarray:
    """One 32x32 RGB image (HWC, uint8) of class `label`."""
    colour, shape = divmod(label, len(SHAPES))
    grey = rng.uniform(60, 200)
    bg = np.clip(rng.normal(grey, 18, size=(SIDE, SIDE, 3)), 0, 255).astype(np.uint8)
    img = Image.fromarray(bg, "RGB")
    d = ImageDraw.Draw(img)
    hue = (list(COLOURS.values())[colour] + rng.uniform(-0.05, 0.05)) % 1.0
    fill = hsv_to_rgb(hue, rng.uniform(0.65, 1.0), rng.uniform(0.55, 1.0))
    size = rng.uniform(9, 16)
    cx, cy = rng.uniform(size / 2 + 1, SIDE - size / 2 - 1, size=2)
    box = [cx - size / 2, cy - size / 2, cx + size / 2, cy + size / 2]
    if SHAPES[shape] == "circle":
        d.ellipse(box, fill=fill)
    elif SHAPES[shape] == "square":
        d.rectangle(box, fill=fill)
    else:
        d.polygon([(cx, box[1]), (box[0], box[3]), (box[2], box[3])], fill=fill)
    return np.asarray(img, dtype=np.uint8)


def dataset(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.arange(n) % len(LABELS)
    rng.shuffle(y)
    x = np.stack([draw(int(label), rng) for label in y])
    return x, y.astype(np.int64)


def to_input(x: np.ndarray) -> torch.Tensor:
    """uint8 NHWC -> normalized float NCHW, as the card says."""
    t = torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255.0
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    return (t - mean) / std


def build() -> nn.Sequential:
    return nn.Sequential(
        OrderedDict(
            conv1=nn.Conv2d(3, 8, 3, padding=1),
            bn1=nn.BatchNorm2d(8),
            act1=nn.ReLU(),
            pool1=nn.MaxPool2d(2),
            conv2=nn.Conv2d(8, 16, 3, padding=1),
            bn2=nn.BatchNorm2d(16),
            act2=nn.ReLU(),
            pool2=nn.MaxPool2d(2),
            flatten=nn.Flatten(),
            fc=nn.Linear(16 * 8 * 8, len(LABELS)),
        )
    )


def main() -> None:
    args = common.parse_args(6)
    common.setup(args["seed"])
    train_x, train_y = dataset(TRAIN, args["seed"])
    test_x, test_y = dataset(TEST, args["seed"] + 1000)
    x, y = to_input(train_x), torch.from_numpy(train_y)
    test = (to_input(test_x), torch.from_numpy(test_y))
    model = build()
    hp = {"epochs": args["epochs"], "lr": 3e-3, "batch": 128}
    common.log(f"{NAME}: {TRAIN} synthetic training images, {hp}")
    common.train(model, x, y, seed=args["seed"], test=test, **hp)
    accuracy = common.evaluate(model, *test)
    common.log(f"test accuracy {accuracy:.4f} on {TEST} synthetic test images")
    if args["no_export"]:
        return
    model.eval()
    PACKAGE.mkdir(parents=True, exist_ok=True)
    onnx_path = PACKAGE / "model.onnx"
    torch.onnx.export(
        model,
        (torch.zeros(1, 3, SIDE, SIDE),),
        str(onnx_path),
        input_names=["input"],
        output_names=["logits"],
        opset_version=common.OPSET,
        dynamo=False,
        do_constant_folding=True,
    )
    import onnx

    proto = onnx.load(str(onnx_path))
    onnx.checker.check_model(proto, full_check=True)
    common.log(f"ONNX ops: {[n.op_type for n in proto.graph.node]}")
    # Calibration and test PNGs from a third, independent draw.
    images, labels = dataset(CALIBRATION + TEST_PNG, args["seed"] + 2000)
    for sub in ("calibration", "test"):
        (PACKAGE / sub).mkdir(exist_ok=True)
        for old in (PACKAGE / sub).glob("*.png"):
            old.unlink()
    lines = ["# FILE LABEL (class name), synthetic images from training/train_colour_shapes.py"]
    for i, (img, label) in enumerate(zip(images, labels)):
        if i < CALIBRATION:
            Image.fromarray(img, "RGB").save(PACKAGE / "calibration" / f"{i:03d}.png")
        else:
            name = f"{i - CALIBRATION:03d}-{LABELS[label]}.png"
            Image.fromarray(img, "RGB").save(PACKAGE / "test" / name)
            lines.append(f"{name} {LABELS[label]}")
    card = {
        "format_version": 1,
        "name": NAME,
        "description": (
            "Conventional colour CNN (Conv-BN-ReLU-MaxPool x2, Linear) on synthetic 32x32 RGB "
            f"shapes, 9 classes (colour x shape); {accuracy:.2%} cleartext accuracy on "
            f"{TEST} synthetic test images"
        ),
        "labels": LABELS,
        "input": {"channels": 3, "height": SIDE, "width": SIDE, "mean": MEAN, "std": STD},
    }
    (PACKAGE / "test" / "labels.txt").write_text("\n".join(lines) + "\n")
    (PACKAGE / "model.json").write_text(json.dumps(card, indent=2) + "\n")
    info = {
        "command": "nice -n 10 python training/train_colour_shapes.py"
        + ("" if args["epochs"] == 6 else f" --epochs {args['epochs']}"),
        "seed": args["seed"],
        "train_images": TRAIN,
        "test_accuracy": round(accuracy, 4),
        "torch": torch.__version__,
        "data": "synthetic (no colour data set installs offline here)",
        **hp,
    }
    (PACKAGE / "TRAINING.json").write_text(json.dumps(info, indent=2) + "\n")
    common.log(f"wrote {common.rel(PACKAGE)}")


if __name__ == "__main__":
    sys.exit(main())
