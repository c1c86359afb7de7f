import pytest
import tensorflow as tf

from keras_llm.distribute import get_strategy
from keras_llm.errors import UserError


def test_default_and_auto_on_a_machine_without_gpus():
    assert get_strategy("default") is tf.distribute.get_strategy()
    if not tf.config.list_physical_devices("GPU"):
        assert get_strategy("auto").num_replicas_in_sync == 1


def test_cpu_devices_and_mirrored():
    # tests/conftest.py created 2 logical CPUs before TensorFlow started;
    # these strategies are built, not run (the tests share one for fit).
    strategy = get_strategy("cpu:2")
    assert isinstance(strategy, tf.distribute.MirroredStrategy)
    assert strategy.num_replicas_in_sync == 2
    if not tf.config.list_physical_devices("GPU"):
        assert get_strategy("mirrored").num_replicas_in_sync == 2


@pytest.mark.parametrize(
    "name,message",
    [
        ("cpu:8", "already started with 2"),
        ("cpu:0", "at least 1"),
        ("gpus", "unknown strategy 'gpus'"),
        (3, "must be a name"),
    ],
)
def test_bad_names(name, message):
    with pytest.raises(UserError, match=message):
        get_strategy(name)
