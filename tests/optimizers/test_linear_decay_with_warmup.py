import keras
import numpy as np
import pytest

from keras_llm.optimizers import LinearDecayWithWarmup


def test_warmup_then_linear_decay_then_flat():
    schedule = LinearDecayWithWarmup(
        1e-3, warmup_steps=10, decay_steps=90, end_learning_rate=1e-4
    )
    values = [float(schedule(s)) for s in (0, 5, 10, 55, 100, 150)]
    np.testing.assert_allclose(
        values, [0.0, 5e-4, 1e-3, 5.5e-4, 1e-4, 1e-4], rtol=1e-5
    )


def test_serializes_and_drives_an_optimizer():
    schedule = LinearDecayWithWarmup(0.1, warmup_steps=2, decay_steps=8)
    revived = keras.optimizers.schedules.deserialize(
        keras.optimizers.schedules.serialize(schedule)
    )
    assert revived.get_config() == schedule.get_config()
    optimizer = keras.optimizers.SGD(revived)
    variable = keras.Variable(np.zeros(1, "float32"))
    for _ in range(3):
        optimizer.apply([np.ones(1, "float32")], [variable])
    # Rates of steps 0, 1, 2: 0, 0.05, 0.1.
    np.testing.assert_allclose(variable.numpy(), [-0.15], rtol=1e-5)


def test_bad_arguments():
    with pytest.raises(ValueError, match="decay_steps"):
        LinearDecayWithWarmup(0.1, warmup_steps=2, decay_steps=0)
