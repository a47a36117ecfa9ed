"""Trains and exports mnist-cnn, the default HE-friendly model (see polycnn.py for the design).

    nice -n 10 python training/train_mnist_cnn.py
"""

import polycnn

if __name__ == "__main__":
    polycnn.run(
        name="mnist-cnn",
        dataset="mnist",
        channels=8,
        hidden=64,
        default_epochs=15,
        script="train_mnist_cnn.py",
    )
