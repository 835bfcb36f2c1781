import os

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")


@pytest.fixture(scope="session")
def native():
    """rx.RNN's compiled kernels, loaded (built on first use); the test is skipped, saying
    why, where they cannot be built or loaded."""
    from keras_rnnx import _native

    module = _native.load()
    if module is None:
        pytest.skip(_native.status())
    return module
