"""Writes a dataset's full test set (10,000 images) in the samples format the Rust side reads
(`cisample-v1`, see training/common.py `write_samples`) to bench/.cache/, for encrypted accuracy
runs over the whole test set: the repository ships only the first 1,000 test images.

    training/.venv/bin/python bench/export_full_test_set.py mnist
    cargo run --release -p cipherinfer-compiler --example he_bench -- \
        --samples bench/.cache/mnist-test-10000.bin --all --threads 2
"""

import struct
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "training"))
import common  # noqa: E402


def main() -> None:
    dataset = sys.argv[1] if len(sys.argv) > 1 else "mnist"
    data = common.load_dataset(dataset)
    x, y = data["test_x"], data["test_y"]
    classes = common.DATASETS[dataset]["classes"]
    out = Path(__file__).resolve().parent / ".cache" / f"{dataset}-test-{len(y)}.bin"
    out.parent.mkdir(parents=True, exist_ok=True)
    header = common.SAMPLES_MAGIC + struct.pack("<HHIHHHH", common.SAMPLES_VERSION, len(classes), len(y), 28, 28, 1, 0)
    out.write_bytes(header + y.astype(np.uint8).tobytes() + x.astype(np.uint8).tobytes())
    print(f"{out}: {len(y)} images")


if __name__ == "__main__":
    main()
