"""Write a stratified Fashion-MNIST subset as an image folder, from Debian's dataset-fashion-mnist.

    apt-get install dataset-fashion-mnist
    python examples/prepare_fashion_mnist.py examples/data/fashion --train 2000 --test 2000

makes ``train/<class>/*.png`` drawn from the 60,000 training images and a disjoint ``test/`` drawn
from the 10,000 t10k images, both stratified by class.
"""

from __future__ import annotations

import argparse
import gzip
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.model_selection import train_test_split

SOURCE = Path("/usr/share/datasets/fashion-mnist")
CLASSES = ("tshirt_top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle_boot")


def read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    dims = data[3]
    shape = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


def stratified_subset(labels: np.ndarray, size: int, seed: int) -> np.ndarray:
    if size >= len(labels):
        return np.arange(len(labels))
    chosen, _ = train_test_split(np.arange(len(labels)), train_size=size, stratify=labels, random_state=seed)
    return np.sort(chosen)


def write_split(out: Path, images: np.ndarray, labels: np.ndarray, chosen: np.ndarray, prefix: str) -> None:
    for i in chosen:
        folder = out / CLASSES[labels[i]]
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{prefix}{i:05d}.png"
        if not path.is_file():  # an earlier run's file stays as it is: a study of it can continue
            Image.fromarray(images[i], mode="L").save(path)


def write_fashion_mnist(out: Path, train: int, test: int, seed: int = 0, source: Path = SOURCE) -> None:
    if not (source / "train-images-idx3-ubyte.gz").is_file():
        raise SystemExit(f"{source}: Fashion-MNIST not found; apt-get install dataset-fashion-mnist")
    train_x, train_y = read_idx(source / "train-images-idx3-ubyte.gz"), read_idx(source / "train-labels-idx1-ubyte.gz")
    test_x, test_y = read_idx(source / "t10k-images-idx3-ubyte.gz"), read_idx(source / "t10k-labels-idx1-ubyte.gz")
    write_split(out / "train", train_x, train_y, stratified_subset(train_y, train, seed), "train")
    write_split(out / "test", test_x, test_y, stratified_subset(test_y, test, seed), "t10k")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--train", type=int, default=2000)
    parser.add_argument("--test", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    write_fashion_mnist(args.out, args.train, args.test, args.seed)
    print(f"wrote {args.train} training and {args.test} held-out images under {args.out}")


if __name__ == "__main__":
    main()
