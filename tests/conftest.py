import os
import pathlib

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
MNIST_DIR = pathlib.Path(os.environ.get("NNJIT_MNIST_DIR", ROOT.parent / "shared" / "data" / "mnist"))
MNIST_FILES = ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture(scope="session")
def mnist_test_set():
    """The real MNIST test set as (uint8 images (10000, 28, 28), uint8 labels (10000,)).

    Skipped only when the files are absent; .ci/run sets NNJIT_REQUIRE_DATA=1
    so that in CI their absence fails instead.
    """
    from nnjit.data import read_idx

    missing = [f for f in MNIST_FILES if not (MNIST_DIR / f).exists()]
    if missing:
        msg = f"real MNIST test set not found in {MNIST_DIR} (missing {missing})"
        if os.environ.get("NNJIT_REQUIRE_DATA"):
            pytest.fail(msg)
        pytest.skip(msg)
    return read_idx(MNIST_DIR / MNIST_FILES[0]), read_idx(MNIST_DIR / MNIST_FILES[1])
