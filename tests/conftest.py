"""Shared test set-up.

torch and timm (the reference models) must be imported before TensorFlow in
one process: the other order crashes on this platform. Importing them here,
first, makes the order hold whatever tests run.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

try:  # Reference models; optional outside the test extra.
    import timm  # noqa: F401
    import torch  # noqa: F401
except ImportError:  # pragma: no cover
    pass

import keras  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _reset_keras_state():
    """Each test starts with the float32 policy and channels_last."""
    keras.config.set_dtype_policy("float32")
    keras.config.set_image_data_format("channels_last")
    yield
    keras.config.set_dtype_policy("float32")
    keras.config.set_image_data_format("channels_last")
