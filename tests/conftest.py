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


# A full `gc.collect()` walks TensorFlow's whole object graph: about 0.7 s
# here, after every test it would cost minutes of a CI run. Keras' state is
# reset after each test and the garbage collected after every
# `_COLLECT_EVERY` tests instead.
_COLLECT_EVERY = 25
_tests_since_collect = 0


@pytest.fixture(autouse=True)
def _reset_keras_state():
    """Every test starts with float32, a fixed seed and a fresh name scope."""
    global _tests_since_collect
    keras.config.set_dtype_policy("float32")
    keras.utils.set_random_seed(0)
    yield
    keras.config.set_dtype_policy("float32")
    _tests_since_collect += 1
    collect = _tests_since_collect >= _COLLECT_EVERY
    if collect:
        _tests_since_collect = 0
    keras.backend.clear_session(free_memory=collect)


@pytest.fixture
def mirrored_strategy():
    from tests.layer_test_case import shared_strategy

    return shared_strategy()
