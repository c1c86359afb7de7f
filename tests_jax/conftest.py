"""Test set-up of the JAX suite: JAX backend on 8 host CPU devices.

`keras.distribution` shards variables only on the JAX backend (on
TensorFlow it is a silent no-op in Keras 3.15), so model parallelism is
tested here, in a suite of its own run by `tox -e jax`, while the default
`pytest` run (testpaths = tests) stays on TensorFlow. Both variables must be
set before keras or jax is imported: Keras picks its backend at import and
XLA fixes its device count when it starts.
"""

import os
import re

NUM_DEVICES = 8

os.environ["KERAS_BACKEND"] = "jax"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
_flags = re.sub(
    r"--xla_force_host_platform_device_count=\S*",
    "",
    os.environ.get("XLA_FLAGS", ""),
)
os.environ["XLA_FLAGS"] = (
    f"{_flags} --xla_force_host_platform_device_count={NUM_DEVICES}".strip()
)

import jax  # noqa: E402
import keras  # noqa: E402
import pytest  # noqa: E402

# Either fails when keras or jax was imported before this file.
if keras.backend.backend() != "jax" or len(jax.devices()) != NUM_DEVICES:
    raise RuntimeError(
        f"tests_jax needs the JAX backend on {NUM_DEVICES} devices; got "
        f"{keras.backend.backend()!r} on {len(jax.devices())}. Run "
        "`tox -e jax`, or pytest on tests_jax alone."
    )


@pytest.fixture(autouse=True)
def _reset_keras_state():
    """Every test starts with float32, a fixed seed, no distribution."""
    keras.config.set_dtype_policy("float32")
    keras.utils.set_random_seed(0)
    yield
    keras.distribution.set_distribution(None)
    keras.backend.clear_session()
