"""Cut the bundled Fashion-MNIST subset out of the full dataset.

    python data/make_subset.py [--source /usr/share/datasets/fashion-mnist] [--seed 0]

Stratified and seeded: from each of the 10 classes, ``--train-per-class`` images (default 1,000) of the
official train split and ``--test-per-class`` (default 200) of the official t10k split, drawn without
replacement with ``numpy.random.default_rng(seed)``, kept in their original order. Written as gzipped IDX
(mtime=0, so the same input gives the same bytes) under the original file names into
data/fashion-mnist-subset/. The full dataset comes from the Debian package ``dataset-fashion-mnist``.
"""
from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run as a plain script from a checkout: minivolo need not be installed
from minivolo.datasets import DEBIAN_FASHION_MNIST_ROOT, read_idx, write_idx  # noqa: E402

SPLITS = {"train": "train", "test": "t10k"}


def stratified_indices(labels: np.ndarray, per_class: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted indices of ``per_class`` samples of every class in ``labels`` (N,), drawn without replacement."""
    picks = [rng.choice(np.flatnonzero(labels == c), per_class, replace=False) for c in np.unique(labels)]
    return np.sort(np.concatenate(picks))


def make_subset(source: Path, seed: int = 0, train_per_class: int = 1000,
                test_per_class: int = 200) -> dict[str, np.ndarray]:
    """{file name: array} of the subset; one generator, train split drawn first, then test."""
    rng = np.random.default_rng(seed)
    out = {}
    for split, per_class in (("train", train_per_class), ("t10k", test_per_class)):
        images = read_idx(source / f"{split}-images-idx3-ubyte.gz")
        labels = read_idx(source / f"{split}-labels-idx1-ubyte.gz")
        keep = stratified_indices(labels, per_class, rng)
        out[f"{split}-images-idx3-ubyte.gz"] = images[keep]
        out[f"{split}-labels-idx1-ubyte.gz"] = labels[keep]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=DEBIAN_FASHION_MNIST_ROOT,
                        help="folder with the four full Fashion-MNIST .gz files")
    parser.add_argument("--out", type=Path, default=REPO / "data" / "fashion-mnist-subset")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train-per-class", type=int, default=1000)
    parser.add_argument("--test-per-class", type=int, default=200)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for name, array in make_subset(args.source, args.seed, args.train_per_class, args.test_per_class).items():
        path = args.out / name
        write_idx(path, array)
        data = path.read_bytes()
        print(f"{path.name}  {array.shape}  {len(data):>9,d} bytes  sha256 {hashlib.sha256(data).hexdigest()}")


if __name__ == "__main__":
    main()
