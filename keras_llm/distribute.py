"""Picking a `tf.distribute` strategy by name.

Names: `"auto"` (MirroredStrategy over all GPUs when there are two or more,
else the default strategy), `"default"` (no distribution), `"mirrored"`
(MirroredStrategy over all GPUs, or over the logical CPU devices when there
is no GPU) and `"cpu:N"` (N logical CPU devices with MirroredStrategy over
them: data parallelism exercised on a machine without accelerators).
"""

import re

from keras_llm.errors import UserError

STRATEGY_NAMES = ("auto", "default", "mirrored", "cpu:N")


def _cpu_devices(count):
    """`count` logical CPU devices, creating them if TF has not started."""
    import tensorflow as tf

    physical = tf.config.list_physical_devices("CPU")
    try:
        tf.config.set_logical_device_configuration(
            physical[0], [tf.config.LogicalDeviceConfiguration()] * count
        )
    except RuntimeError:
        pass  # already initialised: use what exists
    logical = tf.config.list_logical_devices("CPU")
    if len(logical) < count:
        raise UserError(
            f"strategy cpu:{count} needs {count} logical CPU devices but "
            f"TensorFlow already started with {len(logical)}; choose the "
            "strategy before TensorFlow runs any operation"
        )
    return [d.name for d in logical[:count]]


def get_strategy(name="auto"):
    """Returns the `tf.distribute.Strategy` a name stands for.

    Args:
        name: `"auto"`, `"default"`, `"mirrored"` or `"cpu:N"`. Defaults to
            `"auto"`.

    Returns:
        A `tf.distribute.Strategy`; build and compile the model inside its
        `scope()`.

    Raises:
        UserError: for an unknown name, or `"cpu:N"` after TensorFlow
            initialised fewer devices.

    Example:

    ```python
    import keras_llm

    strategy = keras_llm.distribute.get_strategy("default")
    print(strategy.num_replicas_in_sync)  # 1
    ```
    """
    import tensorflow as tf

    if not isinstance(name, str):
        raise UserError(f"strategy must be a name, got {name!r}")
    match = re.fullmatch(r"cpu:(\d+)", name)
    if match:
        count = int(match.group(1))
        if count < 1:
            raise UserError(f"strategy {name}: N must be at least 1")
        return tf.distribute.MirroredStrategy(_cpu_devices(count))
    gpus = tf.config.list_physical_devices("GPU")
    if name == "auto":
        if len(gpus) > 1:
            return tf.distribute.MirroredStrategy()
        return tf.distribute.get_strategy()
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        if gpus:
            return tf.distribute.MirroredStrategy()
        devices = [d.name for d in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(devices)
    raise UserError(
        f"unknown strategy {name!r}; expected one of "
        f"{', '.join(STRATEGY_NAMES)}"
    )
