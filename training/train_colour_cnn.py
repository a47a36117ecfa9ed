"""Trains a small colour CNN on synthetic 32x32 RGB textures and writes it as a model package fixture.

No colour image data set installs offline on this machine kind (see README.md), so the data are
synthetic, drawn here deterministically, and deliberately unlike colour-shapes: eight classes of
coloured *textures*, each painted between two random colours (independent random hues, saturation,
brightness and contrast, the same distribution for every class) with random frequency, phase,
orientation jitter, hard or soft edges and pixel noise. No colour decides the class; the network
must recognise the pattern:

    horizontal_stripes  vertical_stripes  diagonal_stripes  checkerboard
    dots                rings             gradient          noise_blob

The network is what a user would write for 32x32 RGB, with a global average pool instead of a big
Linear layer, exported by the stock torch.onnx.export call (no BatchNorm folding of our own):

    input 3x32x32
    conv1 3x3, 3 -> 16, padding 1  -> BatchNorm -> ReLU -> MaxPool 2x2   -> 16 x 16 x 16
    conv2 3x3, 16 -> 32, padding 1 -> BatchNorm -> ReLU -> MaxPool 2x2   -> 32 x 8 x 8
    conv3 3x3, 32 -> 32, padding 1 -> BatchNorm -> ReLU                  -> 32 x 8 x 8
    AdaptiveAvgPool2d(1) -> Flatten -> Linear(32 -> 8)

Output: crates/cli/tests/packages/colour-cnn/ (model.json with the per-channel mean/std measured on
the training images, model.onnx, 32 calibration PNGs from the training set, the first 100 test
images as PNGs with test/labels.txt, TRAINING.json), the format of docs/formats.md section 9.

    nice -n 10 python training/train_colour_cnn.py [--epochs N] [--seed S] [--no-export]
"""

from __future__ import annotations

import colorsys
import functools
import sys
from collections import OrderedDict

import numpy as np
import torch
from torch import nn

import common
import package

NAME, SCRIPT, EPOCHS = "colour-cnn", "train_colour_cnn.py", 12
PACKAGE = package.PACKAGES_DIR / NAME
LABELS = [
    "horizontal_stripes",
    "vertical_stripes",
    "diagonal_stripes",
    "checkerboard",
    "dots",
    "rings",
    "gradient",
    "noise_blob",
]
SIDE = 32
TRAIN, TEST = 24_000, 4_000
HP = {"lr": 3e-3, "batch": 128, "weight_decay": 1e-4}

# The generator takes the image side as a parameter (train_colour64.py renders at 64x64). Every
# length in it (periods, cells, dot spacing and radius, ring-centre margin, blur width) is defined
# at 32x32 and multiplied by side / 32, so a larger side renders the same textures with more
# pixels; the random draws are the same in number and order for any side, and at 32x32 (factor
# exactly 1.0) the images are bit-for-bit those drawn before the parameter existed.


@functools.lru_cache(maxsize=None)
def _grid(side: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates YY, XX, 0.5 .. side - 0.5."""
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float64) + 0.5
    return yy, xx


def _wave(t: np.ndarray, period: float, phase: float, hard: bool) -> np.ndarray:
    s = np.sin(2 * np.pi * t / period + phase)
    return (s > 0).astype(np.float64) if hard else 0.5 + 0.5 * s


def _along(angle: float, side: int = SIDE) -> np.ndarray:
    """Coordinate along direction `angle` (radians) through the image centre."""
    yy, xx = _grid(side)
    return (xx - side / 2) * np.cos(angle) + (yy - side / 2) * np.sin(angle)


def _blur(noise: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian low-pass of a periodic field (FFT), so there are no border effects."""
    f = np.fft.fftfreq(len(noise))
    g = np.exp(-2 * (np.pi * sigma) ** 2 * (f[:, None] ** 2 + f[None, :] ** 2))
    return np.real(np.fft.ifft2(np.fft.fft2(noise) * g))


def pattern(label: int, rng: np.random.Generator, side: int = SIDE) -> np.ndarray:
    """The class's pattern as a side x side field in [0, 1] (0 = first colour, 1 = second colour)."""
    name = LABELS[label]
    k = side / SIDE  # lengths below are in 32x32 pixels; exactly 1.0 at 32x32
    yy, xx = _grid(side)
    period, phase, hard = rng.uniform(4.0, 10.0) * k, rng.uniform(0, 2 * np.pi), bool(rng.random() < 0.5)
    jitter = np.deg2rad(rng.uniform(-8, 8))
    if name == "horizontal_stripes":  # value changes down the rows
        return _wave(_along(np.pi / 2 + jitter, side), period, phase, hard)
    if name == "vertical_stripes":
        return _wave(_along(jitter, side), period, phase, hard)
    if name == "diagonal_stripes":  # either diagonal
        return _wave(_along(rng.choice([np.pi / 4, 3 * np.pi / 4]) + 2 * jitter, side), period, phase, hard)
    if name == "checkerboard":
        cell = rng.uniform(3.0, 8.0) * k
        u, v = _along(jitter, side), _along(np.pi / 2 + jitter, side)
        s = np.sin(np.pi * u / cell + rng.uniform(0, 2 * np.pi)) * np.sin(np.pi * v / cell + rng.uniform(0, 2 * np.pi))
        return (s > 0).astype(np.float64) if hard else np.clip(0.5 + s, 0, 1)
    if name == "dots":  # a square lattice of round dots, any rotation
        spacing = rng.uniform(6.0, 10.0) * k
        radius = rng.uniform(1.3 * k, 0.3 * spacing)
        angle = rng.uniform(0, np.pi / 2)
        u = _along(angle, side) + rng.uniform(0, spacing)
        v = _along(angle + np.pi / 2, side) + rng.uniform(0, spacing)
        du = (u % spacing) - spacing / 2
        dv = (v % spacing) - spacing / 2
        return np.clip(radius + 0.5 - np.hypot(du, dv), 0, 1)
    if name == "rings":  # concentric rings around a point inside the image
        cx, cy = rng.uniform(6 * k, side - 6 * k, size=2)
        return _wave(np.hypot(xx - cx, yy - cy), period, phase, hard)
    if name == "gradient":  # a smooth ramp across the whole image, any direction, random curve
        t = _along(rng.uniform(0, 2 * np.pi), side)
        t = (t - t.min()) / (t.max() - t.min())
        return t ** rng.uniform(0.5, 2.0)
    if name == "noise_blob":  # low-pass random field: a few soft blobs
        field = _blur(rng.normal(size=(side, side)), rng.uniform(2.0, 3.5) * k)
        return (field - field.min()) / (field.max() - field.min())
    raise ValueError(name)


def _colour(rng: np.random.Generator) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(rng.random(), rng.uniform(0.0, 1.0), rng.uniform(0.15, 1.0)))


def draw(label: int, rng: np.random.Generator, side: int = SIDE) -> np.ndarray:
    """One side x side RGB image (HWC, uint8) of class `label`."""
    p = pattern(label, rng, side)
    while True:  # two random colours, blended by a random contrast, far enough apart to see
        c0, c1 = _colour(rng), _colour(rng)
        c1 = c0 + rng.uniform(0.5, 1.0) * (c1 - c0)
        if np.linalg.norm(c1 - c0) >= 0.3:
            break
    img = c0 + p[:, :, None] * (c1 - c0)
    img = img + rng.normal(0.0, rng.uniform(0.0, 0.06), size=img.shape)
    return np.clip(np.rint(img * 255), 0, 255).astype(np.uint8)


def dataset(n: int, seed: int, side: int = SIDE) -> tuple[np.ndarray, np.ndarray]:
    """n side x side images, classes balanced and shuffled."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % len(LABELS)
    rng.shuffle(y)
    return np.stack([draw(int(label), rng, side) for label in y]), y.astype(np.int64)


def to_input(x: np.ndarray, mean: list[float], std: list[float]) -> torch.Tensor:
    """uint8 NHWC -> (pixel/255 - mean[c]) / std[c], float NCHW, as the card says."""
    t = torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255.0
    return (t - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


def build() -> nn.Sequential:
    return nn.Sequential(
        OrderedDict(
            conv1=nn.Conv2d(3, 16, 3, padding=1),
            bn1=nn.BatchNorm2d(16),
            act1=nn.ReLU(),
            pool1=nn.MaxPool2d(2),
            conv2=nn.Conv2d(16, 32, 3, padding=1),
            bn2=nn.BatchNorm2d(32),
            act2=nn.ReLU(),
            pool2=nn.MaxPool2d(2),
            conv3=nn.Conv2d(32, 32, 3, padding=1),
            bn3=nn.BatchNorm2d(32),
            act3=nn.ReLU(),
            gap=nn.AdaptiveAvgPool2d(1),
            flatten=nn.Flatten(),
            fc=nn.Linear(32, len(LABELS)),
        )
    )


DESCRIPTION = "Small colour CNN (Conv-BN-ReLU-MaxPool x2, Conv-BN-ReLU, global average pool, Linear)"


def main(name: str = NAME, script: str = SCRIPT, epochs: int = EPOCHS, build=build, description: str = DESCRIPTION) -> None:
    """Trains `build()` on the textures and writes package `name` (train_colour_avg32.py reuses it)."""
    NAME, SCRIPT, EPOCHS, PACKAGE = name, script, epochs, package.PACKAGES_DIR / name
    args = common.parse_args(EPOCHS)
    common.setup(args["seed"])
    train_x, train_y = dataset(TRAIN, args["seed"])
    test_x, test_y = dataset(TEST, args["seed"] + 1000)
    pixels = train_x.reshape(-1, 3).astype(np.float64) / 255.0
    mean = [round(float(v), 4) for v in pixels.mean(0)]
    std = [round(float(v), 4) for v in pixels.std(0)]
    common.log(f"{NAME}: {TRAIN} synthetic training images, {TEST} test; per-channel mean {mean}, std {std}")
    x, y = to_input(train_x, mean, std), torch.from_numpy(train_y)
    test = (to_input(test_x, mean, std), torch.from_numpy(test_y))
    model = build()
    timer = package.Timer()
    common.log(f"epochs {args['epochs']}, {HP}")
    common.train(model, x, y, epochs=args["epochs"], seed=args["seed"], test=test, **HP)
    train_seconds = timer.seconds()
    accuracy = common.evaluate(model, *test)
    common.log(f"plaintext accuracy on the full synthetic test set ({TEST} images): {accuracy:.4f}")
    with torch.no_grad():
        pred = torch.cat([model(test[0][i : i + 1000]).argmax(1) for i in range(0, TEST, 1000)])
    per_class = {LABELS[c]: round(float((pred[test[1] == c] == c).float().mean()), 4) for c in range(len(LABELS))}
    common.log(f"per-class test accuracy: {per_class}")
    common.log(f"training time {train_seconds:.0f} s")
    if args["no_export"]:
        return

    ops, input_name = package.export_stock(model, (1, 3, SIDE, SIDE), PACKAGE / "model.onnx")
    common.log(f"ONNX ops ({len(ops)}): {ops}; graph input {input_name!r}")
    # Calibration: 32 training images (seeded choice); test: the first 100 synthetic test images.
    calib_index = np.sort(np.random.default_rng(args["seed"]).choice(TRAIN, package.CALIBRATION, replace=False))
    package.write_images(
        PACKAGE,
        train_x[calib_index],
        test_x[: package.TEST_PNG],
        [LABELS[int(c)] for c in test_y[: package.TEST_PNG]],
        f"synthetic test images 0-{package.TEST_PNG - 1}, from training/{SCRIPT}",
    )
    card = {
        "format_version": 1,
        "name": NAME,
        "description": (
            f"{description} on "
            f"synthetic 32x32 RGB textures, 8 classes; {accuracy:.2%} cleartext accuracy on "
            f"{TEST} synthetic test images"
        ),
        "labels": LABELS,
        "input": {"channels": 3, "height": SIDE, "width": SIDE, "mean": mean, "std": std},
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
        "data": "synthetic textures drawn by the script (no colour data set installs offline here); "
        f"training set from seed {args['seed']}, test set from seed {args['seed'] + 1000}",
        "train_images": TRAIN,
        "test_accuracy": round(accuracy, 4),
        "test_images": TEST,
        "test_accuracy_per_class": per_class,
        "package_test_accuracy": checked["accuracy"],
        "package_test_images": "synthetic test images 0-99 (test/)",
        "calibration_images": "synthetic training images " + ", ".join(str(int(i)) for i in calib_index),
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
