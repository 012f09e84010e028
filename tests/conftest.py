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
