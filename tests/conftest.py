import os

import pytest
import torch

import safemax


def pytest_report_header(config):
    return (f"safemax {safemax.__version__} from {safemax.__file__}; kernels registered for "
            f"{', '.join(safemax.backends())}; torch {torch.__version__}")


def cuda_ready() -> bool:
    return torch.cuda.is_available() and "cuda" in safemax.backends()


requires_cuda = pytest.mark.skipif(not cuda_ready(), reason="needs a CUDA device and safemax's CUDA kernels")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.get_closest_marker("cuda") and not cuda_ready():
            item.add_marker(pytest.mark.skip(reason="needs a CUDA device and safemax's CUDA kernels"))


FASHION_MNIST_MISSING = "Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)"


def fashion_mnist_or_skip() -> str:
    """The folder of the real Fashion-MNIST files. Without them the calling test skips — or fails
    when ``SAFEMAX_REQUIRE_DATA=1`` (CI, which installs the Debian package, sets it)."""
    from safemax.data import find_fashion_mnist

    try:
        return find_fashion_mnist()
    except FileNotFoundError as e:
        if os.environ.get("SAFEMAX_REQUIRE_DATA") == "1":
            pytest.fail(f"{FASHION_MNIST_MISSING}, and SAFEMAX_REQUIRE_DATA=1 requires it:\n{e}",
                        pytrace=False)
        pytest.skip(FASHION_MNIST_MISSING)


@pytest.fixture(scope="session")
def fashion_mnist_dir():
    """``fashion_mnist_or_skip()`` as a fixture: the real files' folder, or a skip (a failure in CI)."""
    return fashion_mnist_or_skip()
