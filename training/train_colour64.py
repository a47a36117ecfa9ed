"""Trains a small, shallow colour network on synthetic 64x64 RGB textures: a model package fixture.

The fixture of the encrypted end-to-end test of a 64x64 colour input, so it is deliberately cheap
under homomorphic encryption: one convolution with few channels, one ReLU, no deep stack. The data
are the eight texture classes of train_colour_cnn.py, drawn by its generator at 64x64 (the same
textures rendered with twice the pixels per side; see the generator's notes there):

    horizontal_stripes  vertical_stripes  diagonal_stripes  checkerboard
    dots                rings             gradient          noise_blob

The network is ordinary PyTorch, exported by the stock torch.onnx.export call (no BatchNorm folding
of our own):

    input 3x64x64
    conv1 5x5, 3 -> 8, stride 2, padding 2 -> BatchNorm -> ReLU    -> 8 x 32 x 32
    AvgPool 4x4                                                    -> 8 x 8 x 8
    Flatten -> Linear(512 -> 8)

Eight channels, not four: with four (and the same training) the network stops near 69% test
accuracy (diagonal stripes, checkerboard and dots confused); with eight it passes 90% in 30
epochs of about 3.5 s each on one thread.

Output: crates/cli/tests/packages/colour64/ (model.json with the per-channel mean/std measured on
the training images, model.onnx, 16 calibration PNGs from the training set, 20 test images as PNGs
with test/labels.txt, TRAINING.json), the format of docs/formats.md section 9.

The pixel noise of these textures (up to 0.06 of full scale, drawn per image) makes a noisy 64x64
PNG about 8 KB, so the first 36 images would take the package to about 300 KB. To keep it under
200 KB the package's images are the first ones, in order, whose noise is low (NOISE_MAX below),
estimated from the image alone: every texture is painted between two colours, so its pixels lie on
a line in RGB space and their spread off that line is the noise. The noise level is drawn
independently of the class, so this favours no class; at most PER_CLASS images of a class are
taken, so that every class appears. TRAINING.json records the indices and the accuracy on every
such test image.

    nice -n 10 python training/train_colour64.py [--epochs N] [--seed S] [--no-export]
"""

from __future__ import annotations

import sys
from collections import OrderedDict

import numpy as np
import torch
from torch import nn

import common
import package
import train_colour_cnn as textures

NAME, SCRIPT, EPOCHS = "colour64", "train_colour64.py", 30
PACKAGE = package.PACKAGES_DIR / NAME
LABELS = textures.LABELS
SIDE = 64
CHANNELS = 8
TRAIN, TEST = 24_000, 4_000
CALIBRATION, TEST_PNG = 16, 20
PER_CLASS = {"calibration": 2, "test": 3}  # at most this many package images of one class
NOISE_MAX = 1.0  # package images: estimated pixel noise (standard deviation) at most this, in 1/255
HP = {"lr": 1e-2, "batch": 128, "weight_decay": 1e-4}


def build() -> nn.Sequential:
    return nn.Sequential(
        OrderedDict(
            conv1=nn.Conv2d(3, CHANNELS, 5, stride=2, padding=2),
            bn1=nn.BatchNorm2d(CHANNELS),
            act1=nn.ReLU(),
            pool1=nn.AvgPool2d(4),
            flatten=nn.Flatten(),
            fc=nn.Linear(CHANNELS * 8 * 8, len(LABELS)),
        )
    )


def noise(x: np.ndarray) -> np.ndarray:
    """Per image (uint8 NHWC), the pixel noise estimated as the RMS spread off the principal colour line.

    The pixels of a texture are c0 + p * (c1 - c0) + noise: on a line in RGB space, plus isotropic
    noise. The two smaller eigenvalues of the pixels' 3x3 covariance hold only noise (and rounding),
    so sqrt(their mean) estimates its standard deviation, in pixel levels.
    """
    p = x.reshape(len(x), -1, 3).astype(np.int64)
    n = p.shape[1]
    s = p.sum(1)
    cov = (np.einsum("npi,npj->nij", p, p) * n - s[:, :, None] * s[:, None, :]) / float(n * n)
    return np.sqrt(np.clip(np.linalg.eigvalsh(cov)[:, :2].mean(1), 0, None))


def quiet_first(x: np.ndarray, y: np.ndarray, count: int, per_class: int) -> np.ndarray:
    """Indices of the first `count` images of x with noise at most NOISE_MAX, at most per_class of a class."""
    taken = np.zeros(len(LABELS), np.int64)
    index = []
    for i in np.flatnonzero(noise(x) <= NOISE_MAX):
        if len(index) < count and taken[y[i]] < per_class:
            taken[y[i]] += 1
            index.append(int(i))
    assert len(index) == count and taken.min() > 0, f"{len(index)} images, per class {taken}"
    return np.array(index)


def main() -> None:
    args = common.parse_args(EPOCHS)
    common.setup(args["seed"])
    timer = package.Timer()
    train_x, train_y = textures.dataset(TRAIN, args["seed"], SIDE)
    test_x, test_y = textures.dataset(TEST, args["seed"] + 1000, SIDE)
    pixels = train_x.reshape(-1, 3).astype(np.float64) / 255.0
    mean = [round(float(v), 4) for v in pixels.mean(0)]
    std = [round(float(v), 4) for v in pixels.std(0)]
    common.log(
        f"{NAME}: {TRAIN} synthetic {SIDE}x{SIDE} training images, {TEST} test ({timer.seconds():.0f} s to draw); "
        f"per-channel mean {mean}, std {std}"
    )
    x, y = textures.to_input(train_x, mean, std), torch.from_numpy(train_y)
    test = (textures.to_input(test_x, mean, std), torch.from_numpy(test_y))
    model = build()
    timer = package.Timer()
    common.log(f"epochs {args['epochs']}, channels {CHANNELS}, {HP}")
    common.train(model, x, y, epochs=args["epochs"], seed=args["seed"], test=test, **HP)
    train_seconds = timer.seconds()
    accuracy = common.evaluate(model, *test)
    common.log(f"plaintext accuracy on the full synthetic test set ({TEST} images): {accuracy:.4f}")
    with torch.no_grad():
        pred = torch.cat([model(test[0][i : i + 1000]).argmax(1) for i in range(0, TEST, 1000)])
    per_class = {LABELS[c]: round(float((pred[test[1] == c] == c).float().mean()), 4) for c in range(len(LABELS))}
    common.log(f"per-class test accuracy: {per_class}")
    quiet = noise(test_x) <= NOISE_MAX
    quiet_accuracy = float((pred[torch.from_numpy(quiet)] == test[1][torch.from_numpy(quiet)]).float().mean())
    common.log(f"accuracy on the {int(quiet.sum())} test images with noise <= {NOISE_MAX}: {quiet_accuracy:.4f}")
    common.log(f"training time {train_seconds:.0f} s")
    if args["no_export"]:
        return

    ops, input_name = package.export_stock(model, (1, 3, SIDE, SIDE), PACKAGE / "model.onnx")
    common.log(f"ONNX ops ({len(ops)}): {ops}; graph input {input_name!r}")
    # Calibration: the first 16 low-noise images of a seeded permutation of the training set, two
    # per class; test: the first 20 low-noise synthetic test images, at most three per class.
    order = np.random.default_rng(args["seed"]).permutation(TRAIN)
    calib_index = np.sort(order[quiet_first(train_x[order], train_y[order], CALIBRATION, PER_CLASS["calibration"])])
    test_index = quiet_first(test_x, test_y, TEST_PNG, PER_CLASS["test"])
    package.write_images(
        PACKAGE,
        train_x[calib_index],
        test_x[test_index],
        [LABELS[int(c)] for c in test_y[test_index]],
        f"synthetic test images {', '.join(str(int(i)) for i in test_index)} (the first {TEST_PNG} "
        f"with noise <= {NOISE_MAX}/255, at most {PER_CLASS['test']} per class), from training/{SCRIPT}",
    )
    card = {
        "format_version": 1,
        "name": NAME,
        "description": (
            f"Small shallow colour network (Conv 5x5 stride 2 with {CHANNELS} channels, BN, ReLU, AvgPool 4, Linear) "
            f"on synthetic 64x64 RGB textures, 8 classes; {accuracy:.2%} cleartext accuracy on "
            f"{TEST} synthetic test images"
        ),
        "labels": LABELS,
        "input": {"channels": 3, "height": SIDE, "width": SIDE, "mean": mean, "std": std},
    }
    package.write_json(PACKAGE / "model.json", card)
    checked = package.check(PACKAGE, card, model, input_name)
    files = package.sizes(PACKAGE)
    files["package_bytes"] = sum(  # everything but TRAINING.json, which the loader ignores
        f.stat().st_size for f in PACKAGE.rglob("*") if f.is_file() and f.name != "TRAINING.json"
    )
    common.log(f"files: {files}")
    info = {
        "command": f"nice -n 10 python training/{SCRIPT}"
        + ("" if args["epochs"] == EPOCHS else f" --epochs {args['epochs']}")
        + ("" if args["seed"] == 1 else f" --seed {args['seed']}"),
        "seed": args["seed"],
        "epochs": args["epochs"],
        "channels": CHANNELS,
        **HP,
        "data": f"synthetic textures of training/train_colour_cnn.py drawn at {SIDE}x{SIDE} (no colour data set "
        f"installs offline here); training set from seed {args['seed']}, test set from seed {args['seed'] + 1000}",
        "train_images": TRAIN,
        "test_accuracy": round(accuracy, 4),
        "test_images": TEST,
        "test_accuracy_per_class": per_class,
        "low_noise_test_accuracy": round(quiet_accuracy, 4),
        "low_noise_test_images": int(quiet.sum()),
        "package_images_noise_max": NOISE_MAX,
        "package_images_per_class_max": PER_CLASS,
        "package_test_accuracy": checked["accuracy"],
        "package_test_images": "synthetic test images " + ", ".join(str(int(i)) for i in test_index) + " (test/)",
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
