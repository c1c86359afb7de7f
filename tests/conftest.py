"""Test set-up: TensorFlow backend, two logical CPU devices, quiet logs.

The two logical CPU devices let `tf.distribute.MirroredStrategy` tests run
on a machine with one physical CPU device; they must be configured before
TensorFlow initialises its devices, hence here.
"""

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

_cpus = tf.config.list_physical_devices("CPU")
try:
    tf.config.set_logical_device_configuration(
        _cpus[0],
        [tf.config.LogicalDeviceConfiguration()] * 2,
    )
except RuntimeError:  # devices already initialised by an earlier import
    pass


@pytest.fixture(autouse=True)
def _reset_keras_state():
    """Every test starts with float32, a fixed seed and a fresh name scope."""
    keras.config.set_dtype_policy("float32")
    keras.utils.set_random_seed(0)
    yield
    keras.config.set_dtype_policy("float32")
    keras.backend.clear_session()


@pytest.fixture
def mirrored_strategy():
    from tests.layer_test_case import shared_strategy

    return shared_strategy()
