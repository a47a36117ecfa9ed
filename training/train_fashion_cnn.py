"""Trains and exports fashion-cnn: the same HE-friendly network as mnist-cnn, on Fashion-MNIST.

Same shape and widths as mnist-cnn, so it has the same depth, rotations and keys (polycnn.py).

    nice -n 10 python training/train_fashion_cnn.py
"""

import polycnn

if __name__ == "__main__":
    polycnn.run(
        name="fashion-cnn",
        dataset="fashion-mnist",
        channels=8,
        hidden=64,
        default_epochs=15,
        script="train_fashion_cnn.py",
    )
