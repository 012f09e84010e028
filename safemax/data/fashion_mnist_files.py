"""Fashion-MNIST (Zalando's 70,000 28×28 grey-scale clothing images in ten classes) as a diffusion
data set, read from the four standard IDX files wherever they already are — nothing is downloaded.

Where the files are looked for, in order:

1. ``root``, when given (the four files in it, or torchvision's ``root/FashionMNIST/raw``); only there;
2. ``$FASHION_MNIST_DIR``, when set (the same two layouts); only there;
3. ``/usr/share/datasets/fashion-mnist``, where the Debian package ``dataset-fashion-mnist`` puts them;
4. torchvision's download layout ``<root>/FashionMNIST/raw`` under ``~/.cache`` and ``./data``.

Each file may be gzip'd (``train-images-idx3-ubyte.gz``) or not (``train-images-idx3-ubyte``).
When no place has all four, one ``FileNotFoundError`` names the three ways to get them and the
places searched.
"""
import gzip
import os
import zlib

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                         "Sneaker", "Bag", "Ankle boot")
"""The ten class names, indexed by label (Zalando's official names)."""

DEBIAN_DIR = "/usr/share/datasets/fashion-mnist"
"""Where the Debian package ``dataset-fashion-mnist`` installs the four files."""

ENV_VAR = "FASHION_MNIST_DIR"

FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
         "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
IMAGE_MAGIC, LABEL_MAGIC = 2051, 2049
COUNTS = {"train": 60_000, "test": 10_000}
SIDE = 28

HOW_TO_GET = (
    "Get the four files (train/t10k images and labels) one of three ways:\n"
    "  1. the Debian package: apt-get install dataset-fashion-mnist (as root; "
    f"it puts them in {DEBIAN_DIR});\n"
    f"  2. {ENV_VAR}=<a folder with the four files, gzip'd or not>;\n"
    "  3. a torchvision download folder: fashion_mnist(root=<root>) reads <root>/FashionMNIST/raw "
    "(torchvision.datasets.FashionMNIST(<root>, download=True) makes it; ~/.cache and ./data are "
    "looked in without root).")


def _torchvision_roots():
    """The roots whose ``FashionMNIST/raw`` is looked in when neither ``root`` nor the variable is given."""
    return [os.path.expanduser("~/.cache"), os.path.abspath("data")]


def _file(folder: str, name: str):
    """The path of ``name`` (gzip'd or not) in ``folder``, or None."""
    for candidate in (name + ".gz", name):
        path = os.path.join(folder, candidate)
        if os.path.isfile(path):
            return path
    return None


def _has_all(folder: str) -> bool:
    return all(_file(folder, name) for pair in FILES.values() for name in pair)


def _candidates(root=None):
    """The folders to look in, in order (each the four files' folder itself)."""
    explicit = root if root is not None else os.environ.get(ENV_VAR) or None
    if explicit is not None:
        explicit = os.path.expanduser(str(explicit))
        return [explicit, os.path.join(explicit, "FashionMNIST", "raw")]
    return [DEBIAN_DIR] + [os.path.join(r, "FashionMNIST", "raw") for r in _torchvision_roots()]


def find_fashion_mnist(root=None) -> str:
    """The folder the four Fashion-MNIST files are read from (see the module's search order).

    Args:
        root: a folder holding the four files, or a torchvision root (``root/FashionMNIST/raw``);
            when given, only it is searched. Without it ``$FASHION_MNIST_DIR`` (when set, only it),
            else the Debian package's folder and torchvision's layout under ``~/.cache`` and ``./data``.

    Raises:
        FileNotFoundError: no searched folder has all four files; the message says how to get them.
    """
    searched = _candidates(root)
    for folder in searched:
        if _has_all(folder):
            return folder
    how = "root=" + repr(str(root)) if root is not None else \
        f"${ENV_VAR}={os.environ[ENV_VAR]!r}" if os.environ.get(ENV_VAR) else None
    raise FileNotFoundError(
        "Fashion-MNIST not found" + (f" at {how}" if how else "") + ": no folder has all four files "
        f"({', '.join(n + '[.gz]' for pair in FILES.values() for n in pair)}). Searched: "
        + ", ".join(searched) + ".\n" + HOW_TO_GET)


def _read_idx(path: str, magic: int, dims: int) -> np.ndarray:
    """An IDX file's uint8 array, its magic number, shape and length checked."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
        if path.endswith(".gz"):
            raw = gzip.decompress(raw)
    except (EOFError, OSError, zlib.error) as e:  # gzip.BadGzipFile is an OSError
        raise ValueError(f"{path} is corrupt or truncated ({e}); reinstall or re-download it") from None
    header = 4 + 4 * dims
    if len(raw) < header:
        raise ValueError(f"{path} is truncated: {len(raw)} bytes, shorter than an IDX header")
    found = int.from_bytes(raw[:4], "big")
    if found != magic:
        raise ValueError(f"{path} is not an IDX file of {'images' if dims == 3 else 'labels'}: "
                         f"magic number {found}, expected {magic}")
    shape = tuple(int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(dims))
    size = int(np.prod(shape))
    if len(raw) != header + size:
        raise ValueError(f"{path} is truncated or corrupt: its header promises {shape} "
                         f"({header + size} bytes), the file has {len(raw)}")
    return np.frombuffer(raw, dtype=np.uint8, count=size, offset=header).reshape(shape)


def fashion_mnist(split: str = "train", size: int = 28, root=None) -> TensorDataset:
    """Fashion-MNIST's training (60,000) or test (10,000) images as ``(image [1, size, size] in
    [-1, 1] float32, label int64)`` pairs; the labels index ``FASHION_MNIST_CLASSES``.

    Args:
        split: ``"train"`` or ``"test"``.
        size: 28 (as stored) or 32 (zero-padded by 2 pixels each side with the background, −1, the
            side a UNet that halves its resolution several times wants).
        root: where the files are (see ``find_fashion_mnist``); searched for when None.

    Raises:
        FileNotFoundError: the files are not found (the message says how to get them).
        ValueError: a bad ``split`` or ``size``, or a corrupt file.
    """
    if split not in FILES:
        raise ValueError(f"split must be 'train' or 'test', not {split!r}")
    if size not in (28, 32):
        raise ValueError(f"size must be 28 (as stored) or 32 (padded with the background), not {size!r}")
    folder = find_fashion_mnist(root)
    image_file, label_file = (_file(folder, name) for name in FILES[split])
    images = _read_idx(image_file, IMAGE_MAGIC, 3)
    labels = _read_idx(label_file, LABEL_MAGIC, 1)
    if images.shape[1:] != (SIDE, SIDE):
        raise ValueError(f"{image_file} holds {images.shape[1]}×{images.shape[2]} images, "
                         f"not Fashion-MNIST's {SIDE}×{SIDE}")
    if len(images) != len(labels):
        raise ValueError(f"{image_file} has {len(images)} images but {label_file} "
                         f"{len(labels)} labels")
    if len(labels) and labels.max() >= len(FASHION_MNIST_CLASSES):
        raise ValueError(f"{label_file} has label {labels.max()}; Fashion-MNIST's are 0–9")
    x = torch.from_numpy(images.astype(np.float32)).unsqueeze(1).div_(127.5).sub_(1)  # [N,1,28,28]
    if size == 32:
        x = F.pad(x, (2, 2, 2, 2), value=-1.0)
    return TensorDataset(x.contiguous(), torch.from_numpy(labels.astype(np.int64)))
