"""Writes the labelled sample sets of MNIST and Fashion-MNIST into models/samples/.

For each dataset: the first 1,000 test images with their labels in one binary file
(format in models/README.md) and one PNG per class (the first test image of that class).
Run once before the training scripts; it also writes the datasets' manifest entries.

    python training/export_samples.py
"""

import common


def main() -> None:
    manifest = common.load_manifest()
    for dataset in common.DATASETS:
        entry = common.write_samples(dataset)
        common.upsert(manifest["datasets"], entry)
        common.log(
            f"{dataset}: {entry['samples']['count']} samples -> models/{entry['samples']['file']}, "
            f"{len(entry['images'])} PNGs; label counts {entry['samples']['label_counts']}"
        )
    common.save_manifest(manifest)
    common.log(f"updated {common.MANIFEST}")


if __name__ == "__main__":
    main()
