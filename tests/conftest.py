import pytest
import torch
from needs_data import fashion_mnist_or_skip

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


@pytest.fixture(scope="session")
def fashion_mnist_dir():
    """``fashion_mnist_or_skip()`` as a fixture: the real files' folder, or a skip (a failure in CI)."""
    return fashion_mnist_or_skip()


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module of tiny models, which are all overhead: on a loaded 2-core
    machine threads made them many times slower (``pytestmark = pytest.mark.usefixtures("one_thread")``)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
