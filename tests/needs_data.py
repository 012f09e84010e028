"""Tests that need a real data set: they skip without it, or fail under SAFEMAX_REQUIRE_DATA=1.

(A module of its own, not conftest.py: ``from conftest import`` finds benchmarks/conftest.py when
pytest collects both folders.)"""
import os

import pytest

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
