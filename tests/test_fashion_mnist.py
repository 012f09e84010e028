"""safemax.data.fashion_mnist_files: the real files (skipped without them, failed under SAFEMAX_REQUIRE_DATA=1)
checked against an independent minimal reader and known facts; the search order and both layouts on
tiny fake IDX sets; the error that says how to get the data; corrupt files."""
import gzip
import os
import struct

import numpy as np
import pytest
import torch
from needs_data import FASHION_MNIST_MISSING, fashion_mnist_or_skip

from safemax import data as data_module
from safemax.data import FASHION_MNIST_CLASSES, fashion_mnist, find_fashion_mnist
from safemax.data import fashion_mnist_files as fm

NAMES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
         "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


# ---------------------------------------------------------------- the real data

def read_first(folder, images_name, labels_name):
    """An independent minimal reader: (count, first image as uint8 [28, 28], first label)."""
    def open_any(name):
        path = os.path.join(folder, name)
        return gzip.open(path + ".gz", "rb") if os.path.exists(path + ".gz") else open(path, "rb")

    with open_any(images_name) as f:
        magic, n, rows, cols = struct.unpack(">IIII", f.read(16))
        assert (magic, rows, cols) == (2051, 28, 28)
        first = np.frombuffer(f.read(rows * cols), dtype=np.uint8).reshape(rows, cols)
    with open_any(labels_name) as f:
        magic, m = struct.unpack(">II", f.read(8))
        assert magic == 2049 and m == n
        label = f.read(1)[0]
    return n, first, label


@pytest.fixture(scope="module")
def train(fashion_mnist_dir):
    return fashion_mnist("train", root=fashion_mnist_dir)


@pytest.fixture(scope="module")
def test_split(fashion_mnist_dir):
    return fashion_mnist("test", root=fashion_mnist_dir)


def test_real_shapes_range_and_class_counts(train, test_split):
    for ds, n in ((train, 60_000), (test_split, 10_000)):
        x, y = ds.tensors
        assert x.shape == (n, 1, 28, 28) and x.dtype == torch.float32 and x.is_contiguous()
        assert y.shape == (n,) and y.dtype == torch.int64
        assert x.min() == -1 and x.max() == 1  # 0 and 255 both occur
        assert torch.bincount(y, minlength=10).tolist() == [n // 10] * 10
        image, label = ds[0]
        assert image.shape == (1, 28, 28) and label.dim() == 0


def test_real_data_matches_an_independent_reader(fashion_mnist_dir, train, test_split):
    for ds, (images, labels), n in ((train, NAMES[:2], 60_000), (test_split, NAMES[2:], 10_000)):
        count, first, label = read_first(fashion_mnist_dir, images, labels)
        assert count == n == len(ds)
        assert ds.tensors[1][0].item() == label
        pixels = torch.from_numpy(first.astype(np.float32))
        assert torch.equal(ds.tensors[0][0, 0], pixels / 127.5 - 1)
        assert torch.equal(((ds.tensors[0][0, 0] + 1) * 127.5).round().to(torch.uint8),
                           torch.from_numpy(first.copy()))
    # known facts: both splits begin with an ankle boot; the first labels of each split; the
    # training set's pixel mean and std (0.2860, 0.3530), the usual normalisation constants
    assert FASHION_MNIST_CLASSES[train.tensors[1][0]] == "Ankle boot"
    assert train.tensors[1][:5].tolist() == [9, 0, 0, 3, 0]
    assert test_split.tensors[1][:5].tolist() == [9, 2, 1, 1, 6]
    unit = (train.tensors[0] + 1) / 2
    assert unit.mean().item() == pytest.approx(0.2860, abs=5e-4)
    assert unit.std().item() == pytest.approx(0.3530, abs=5e-4)


def test_real_size_32_pads_with_the_background(fashion_mnist_dir, test_split):
    padded = fashion_mnist("test", size=32, root=fashion_mnist_dir)
    x = padded.tensors[0]
    assert x.shape == (10_000, 1, 32, 32)
    assert torch.equal(x[:, :, 2:30, 2:30], test_split.tensors[0])
    border = torch.ones_like(x, dtype=torch.bool)
    border[:, :, 2:30, 2:30] = False
    assert (x[border] == -1).all()
    assert torch.equal(padded.tensors[1], test_split.tensors[1])


def test_the_default_search_finds_what_the_fixture_found(fashion_mnist_dir):
    assert find_fashion_mnist() == fashion_mnist_dir


# ---------------------------------------------------------------- tiny fake sets

IMAGES = np.random.default_rng(0).integers(0, 256, size=(5, 28, 28), dtype=np.uint8)
LABELS = np.array([0, 9, 3, 3, 7], dtype=np.uint8)


def idx_bytes(array, magic):
    return struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in array.shape) + array.tobytes()


def write_set(folder, gz, names=NAMES):
    os.makedirs(folder, exist_ok=True)
    contents = {NAMES[0]: idx_bytes(IMAGES, 2051), NAMES[1]: idx_bytes(LABELS, 2049),
                NAMES[2]: idx_bytes(IMAGES[:3], 2051), NAMES[3]: idx_bytes(LABELS[:3], 2049)}
    for name in names:
        path = os.path.join(folder, name + (".gz" if gz else ""))
        with (gzip.open(path, "wb") if gz else open(path, "wb")) as f:
            f.write(contents[name])
    return str(folder)


def check_fake(ds, n=5):
    x, y = ds.tensors
    assert x.shape == (n, 1, 28, 28) and y.tolist() == LABELS[:n].tolist()
    assert torch.equal(x[:, 0], torch.from_numpy(IMAGES[:n].astype(np.float32)) / 127.5 - 1)


@pytest.fixture
def nowhere(tmp_path, monkeypatch):
    """No variable, an empty Debian folder and empty torchvision roots: the places the fake sets go."""
    monkeypatch.delenv("FASHION_MNIST_DIR", raising=False)
    places = {"debian": tmp_path / "debian", "cache": tmp_path / "cache", "data": tmp_path / "data"}
    monkeypatch.setattr(fm, "DEBIAN_DIR", str(places["debian"]))
    monkeypatch.setattr(fm, "_torchvision_roots", lambda: [str(places["cache"]), str(places["data"])])
    return places


@pytest.mark.parametrize("gz", [False, True])
def test_fashion_mnist_dir_with_the_four_files(tmp_path, nowhere, monkeypatch, gz):
    folder = write_set(tmp_path / "mine", gz)
    write_set(nowhere["debian"], gz)  # the variable comes first
    monkeypatch.setenv("FASHION_MNIST_DIR", folder)
    assert find_fashion_mnist() == folder
    check_fake(fashion_mnist("train"))
    check_fake(fashion_mnist("test"), n=3)


@pytest.mark.parametrize("gz", [False, True])
def test_torchvision_layout_under_root_the_variable_and_the_default_roots(tmp_path, nowhere,
                                                                         monkeypatch, gz):
    raw = write_set(tmp_path / "tv" / "FashionMNIST" / "raw", gz)
    assert find_fashion_mnist(root=tmp_path / "tv") == raw
    check_fake(fashion_mnist(root=str(tmp_path / "tv")))
    monkeypatch.setenv("FASHION_MNIST_DIR", str(tmp_path / "tv"))
    assert find_fashion_mnist() == raw
    monkeypatch.delenv("FASHION_MNIST_DIR")
    default_raw = write_set(nowhere["data"] / "FashionMNIST" / "raw", gz)
    assert find_fashion_mnist() == default_raw
    check_fake(fashion_mnist("test"), n=3)


def test_the_debian_folder_comes_before_torchvision_and_size_32(nowhere):
    write_set(nowhere["cache"] / "FashionMNIST" / "raw", gz=True)
    debian = write_set(nowhere["debian"], gz=True)
    assert find_fashion_mnist() == debian
    x = fashion_mnist("train", size=32).tensors[0]
    assert x.shape == (5, 1, 32, 32) and (x[:, :, :2] == -1).all() and (x[:, :, :, 30:] == -1).all()
    assert torch.equal(x[:, :, 2:30, 2:30], fashion_mnist("train").tensors[0])


def test_gzipd_and_plain_files_mix_in_one_folder(tmp_path):
    write_set(tmp_path, gz=True, names=NAMES[:2])
    write_set(tmp_path, gz=False, names=NAMES[2:])
    check_fake(fashion_mnist("train", root=tmp_path))
    check_fake(fashion_mnist("test", root=tmp_path), n=3)


def test_nothing_found_names_the_three_ways_and_the_places(tmp_path, nowhere, monkeypatch):
    write_set(nowhere["debian"], gz=True, names=NAMES[:3])  # three files of four are not enough
    with pytest.raises(FileNotFoundError) as e:
        fashion_mnist()
    msg = str(e.value)
    for part in ("apt-get install dataset-fashion-mnist", "FASHION_MNIST_DIR=", "<root>/FashionMNIST/raw",
                 str(nowhere["debian"]), os.path.join(str(nowhere["cache"]), "FashionMNIST", "raw"),
                 os.path.join(str(nowhere["data"]), "FashionMNIST", "raw"), "t10k-labels-idx1-ubyte"):
        assert part in msg, part
    # an explicit place is the only one searched: a wrong one is an error, not another folder's data
    write_set(nowhere["debian"], gz=True)
    monkeypatch.setenv("FASHION_MNIST_DIR", str(tmp_path / "typo"))
    with pytest.raises(FileNotFoundError, match="FASHION_MNIST_DIR=.*typo"):
        find_fashion_mnist()
    with pytest.raises(FileNotFoundError, match="(?s)root=.*elsewhere.*apt-get install"):
        find_fashion_mnist(root=tmp_path / "elsewhere")


def test_the_skip_rule(nowhere, monkeypatch):
    monkeypatch.delenv("SAFEMAX_REQUIRE_DATA", raising=False)
    with pytest.raises(pytest.skip.Exception, match=r"Fashion-MNIST not installed \(apt-get install"):
        fashion_mnist_or_skip()
    monkeypatch.setenv("SAFEMAX_REQUIRE_DATA", "1")
    with pytest.raises(pytest.fail.Exception, match="SAFEMAX_REQUIRE_DATA=1"):
        fashion_mnist_or_skip()
    assert FASHION_MNIST_MISSING == "Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)"


def corrupt(tmp_path, name, content, gz=False):
    write_set(tmp_path, gz=False)
    for ext in ("", ".gz"):
        if os.path.exists(tmp_path / (name + ext)):
            os.remove(tmp_path / (name + ext))
    (tmp_path / (name + (".gz" if gz else ""))).write_bytes(content)


@pytest.mark.parametrize("case, match", [
    ("magic", "magic number 2049, expected 2051"),
    ("short", "truncated or corrupt: its header promises"),
    ("header", "shorter than an IDX header"),
    ("gz-truncated", "corrupt or truncated"),
    ("gz-garbage", "corrupt or truncated"),
    ("count", "5 images but .* 4 labels"),
    ("label", "label 12"),
    ("side", "27×27 images"),
])
def test_corrupt_files_are_refused_with_the_file_named(tmp_path, case, match):
    images, labels = NAMES[0], NAMES[1]
    if case == "magic":
        corrupt(tmp_path, images, idx_bytes(IMAGES, 2049))
    elif case == "short":
        corrupt(tmp_path, images, idx_bytes(IMAGES, 2051)[:-100])
    elif case == "header":
        corrupt(tmp_path, images, b"\x00\x00\x08")
    elif case == "gz-truncated":
        corrupt(tmp_path, images, gzip.compress(idx_bytes(IMAGES, 2051))[:-50], gz=True)
    elif case == "gz-garbage":
        corrupt(tmp_path, images, b"\x1f\x8b" + b"not gzip at all" * 10, gz=True)
    elif case == "count":
        corrupt(tmp_path, labels, idx_bytes(LABELS[:4], 2049))
    elif case == "label":
        corrupt(tmp_path, labels, idx_bytes(np.array([0, 1, 2, 3, 12], dtype=np.uint8), 2049))
    elif case == "side":
        corrupt(tmp_path, images, idx_bytes(IMAGES[:, :27, :27].copy(), 2051))
    with pytest.raises(ValueError, match=match) as e:
        fashion_mnist("train", root=tmp_path)
    assert str(tmp_path) in str(e.value)
    check_fake(fashion_mnist("test", root=tmp_path), n=3)  # the other split is untouched


def test_bad_arguments(tmp_path):
    write_set(tmp_path, gz=False)
    with pytest.raises(ValueError, match="split must be 'train' or 'test', not 'val'"):
        fashion_mnist("val", root=tmp_path)
    with pytest.raises(ValueError, match="size must be 28 .* or 32 .*not 64"):
        fashion_mnist(size=64, root=tmp_path)
    assert len(FASHION_MNIST_CLASSES) == 10 and FASHION_MNIST_CLASSES[0] == "T-shirt/top"
    assert data_module.fashion_mnist is fm.fashion_mnist
