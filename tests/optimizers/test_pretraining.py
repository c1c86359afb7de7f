import keras
import numpy as np
import pytest

from keras_llm.optimizers import AdamW
from keras_llm.optimizers import GradientAccumulation
from keras_llm.optimizers import LinearDecayWithWarmup
from keras_llm.optimizers import for_pretraining


def test_defaults_adamw_cosine_warmup_clipping():
    optimizer = for_pretraining(total_steps=1000)
    assert isinstance(optimizer, AdamW)
    assert optimizer.global_clipnorm == 1.0
    assert optimizer.weight_decay == 0.1
    assert optimizer.beta_2 == 0.95
    schedule = optimizer._learning_rate
    assert isinstance(schedule, keras.optimizers.schedules.CosineDecay)
    rates = [float(schedule(s)) for s in (0, 25, 50, 1000)]
    np.testing.assert_allclose(rates, [0.0, 3e-4, 6e-4, 6e-5], rtol=1e-5)


@pytest.mark.parametrize("schedule,end", [("linear", 1e-4), ("constant", 1e-3)])
def test_linear_and_constant_schedules(schedule, end):
    optimizer = for_pretraining(
        total_steps=100,
        learning_rate=1e-3,
        warmup_steps=10,
        schedule=schedule,
        min_learning_rate=1e-4,
    )
    lr = optimizer._learning_rate
    assert isinstance(lr, LinearDecayWithWarmup)
    np.testing.assert_allclose(float(lr(5)), 5e-4, rtol=1e-5)
    np.testing.assert_allclose(float(lr(100)), end, rtol=1e-5)


def test_accumulation_wraps_and_the_schedule_counts_updates():
    optimizer = for_pretraining(
        total_steps=10, learning_rate=1.0, warmup_steps=2, accumulation_steps=3
    )
    assert isinstance(optimizer, GradientAccumulation)
    variable = keras.Variable(np.ones(2, "float32"), name="kernel")
    for _ in range(6):
        optimizer.apply([np.zeros(2, "float32")], [variable])
    assert int(optimizer.iterations) == 2
    # Warm-up of 2 updates is over after 2 updates, not after 2 micro-steps.
    np.testing.assert_allclose(float(optimizer.learning_rate), 1.0, rtol=1e-5)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(total_steps=0), "total_steps"),
        (dict(total_steps=10, warmup_steps=10), "warmup_steps"),
        (dict(total_steps=10, schedule="step"), "schedule"),
        (dict(total_steps=10, learning_rate=-1.0), "learning_rate"),
        (dict(total_steps=10, min_learning_rate=1.0), "min_learning_rate"),
        (dict(total_steps=10, weight_decay=-0.1), "weight_decay"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        for_pretraining(**kwargs)
