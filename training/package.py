"""Writes a model package (docs/formats.md section 9) as a user would, and checks it end to end.

Used by train_lenet5.py and train_colour_cnn.py, whose packages are test fixtures under
crates/cli/tests/packages/. The network is exported with the stock call a user writes,

    torch.onnx.export(model.eval(), x, path, opset_version=17, dynamo=False)

(no input/output names, no BatchNorm folding of our own: whatever the exporter produces). The
check then reads the written PNGs and labels.txt back from disk, normalises them exactly as the
card says, and runs both torch and onnx's reference evaluator (an independent engine) on them.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

import common

PACKAGES_DIR = common.ROOT / "crates" / "cli" / "tests" / "packages"
CALIBRATION = 32
TEST_PNG = 100


def export_stock(model: nn.Module, shape: tuple[int, ...], path: Path) -> tuple[list[str], str]:
    """The stock export; returns the op list and the graph's input name, after onnx's checker."""
    import onnx

    path.parent.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(model.eval(), torch.zeros(*shape), str(path), opset_version=common.OPSET, dynamo=False)
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    return [n.op_type for n in proto.graph.node], proto.graph.input[0].name


def _png(img: np.ndarray, path: Path) -> None:
    """u8 HxW (grey) or HxWx3 (RGB), fixed encoder settings so the bytes are reproducible."""
    mode = "L" if img.ndim == 2 else "RGB"
    Image.fromarray(img, mode).save(path, optimize=False, compress_level=9)


def write_images(package: Path, calibration: np.ndarray, test: np.ndarray, test_labels: list[str], note: str) -> None:
    """calibration/NNN.png, test/NNN-LABEL.png and test/labels.txt (`FILE LABEL`, label by name)."""
    for sub in ("calibration", "test"):
        (package / sub).mkdir(parents=True, exist_ok=True)
        for old in (package / sub).iterdir():
            old.unlink()
    for i, img in enumerate(calibration):
        _png(img, package / "calibration" / f"{i:03d}.png")
    lines = [f"# FILE LABEL (class name); {note}"]
    for i, (img, label) in enumerate(zip(test, test_labels)):
        name = f"{i:03d}-{label}.png"
        _png(img, package / "test" / name)
        lines.append(f"{name} {label}")
    (package / "test" / "labels.txt").write_text("\n".join(lines) + "\n")


def read_test(package: Path, card: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """The package's test images as the server would see them: PNG -> (pixel/255 - mean) / std."""
    labels = card["labels"]
    xs, ys = [], []
    for line in (package / "test" / "labels.txt").read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        file, label = line.split()
        img = np.asarray(Image.open(package / "test" / file), dtype=np.float32) / 255.0
        img = img[None] if img.ndim == 2 else img.transpose(2, 0, 1)
        xs.append(img)
        ys.append(labels.index(label) if label in labels else int(label))
    mean = np.array(card["input"]["mean"], np.float32).reshape(-1, 1, 1)
    std = np.array(card["input"]["std"], np.float32).reshape(-1, 1, 1)
    x = (np.stack(xs) - mean) / std
    return torch.from_numpy(x.astype(np.float32)), torch.tensor(ys)


def check(package: Path, card: dict, model: nn.Module, input_name: str) -> dict:
    """Torch and ONNX (reference evaluator) accuracy on the package's own test files, and their gap."""
    from onnx.reference import ReferenceEvaluator

    x, y = read_test(package, card)
    model.eval()
    with torch.no_grad():
        ref = model(x).numpy()
    sess = ReferenceEvaluator(str(package / "model.onnx"))
    got = np.concatenate([sess.run(None, {input_name: x[i : i + 1].numpy()})[0] for i in range(len(x))])
    err = float(np.abs(ref - got).max())
    torch_acc = float((ref.argmax(1) == y.numpy()).mean())
    onnx_acc = float((got.argmax(1) == y.numpy()).mean())
    common.log(
        f"package test images ({len(y)}, read back from PNG): torch accuracy {torch_acc:.4f}, "
        f"ONNX reference accuracy {onnx_acc:.4f}, max |torch - onnx| logits {err:.2e}"
    )
    assert err < 1e-3, "exported ONNX disagrees with the torch model"
    assert torch_acc == onnx_acc
    return {"accuracy": round(torch_acc, 4), "images": len(y), "max_abs_logit_diff_torch_vs_onnx": float(f"{err:.3g}")}


def write_json(path: Path, value: dict) -> None:
    path.write_text(json.dumps(value, indent=2) + "\n")


def sizes(package: Path) -> dict:
    def total(sub: str) -> int:
        return sum(p.stat().st_size for p in (package / sub).iterdir())

    return {
        "model_onnx_bytes": (package / "model.onnx").stat().st_size,
        "calibration_bytes": total("calibration"),
        "test_bytes": total("test"),
    }


class Timer:
    def __init__(self) -> None:
        self.t0 = time.time()

    def seconds(self) -> float:
        return round(time.time() - self.t0, 1)
