"""Linear warm-up then linear decay, the schedule of BERT's pretraining.

Keras' `CosineDecay` has a warm-up; its `PolynomialDecay` (power 1, the
linear decay) has none, so the linear variant is this small schedule.
"""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="keras_llm")
class LinearDecayWithWarmup(keras.optimizers.schedules.LearningRateSchedule):
    """Rises linearly from 0 to `learning_rate`, then falls linearly.

    For step `s`: `learning_rate * s / warmup_steps` while
    `s < warmup_steps`, then a straight line from `learning_rate` down to
    `end_learning_rate` at `warmup_steps + decay_steps`, and
    `end_learning_rate` after.

    Args:
        learning_rate: float. Peak learning rate.
        warmup_steps: int. Steps of the linear warm-up. Defaults to `0`.
        decay_steps: int. Steps of the linear decay after the warm-up.
        end_learning_rate: float. Final learning rate. Defaults to `0.0`.
        name: string. Defaults to `"LinearDecayWithWarmup"`.

    Example:

    ```python
    import keras_llm

    schedule = keras_llm.optimizers.LinearDecayWithWarmup(
        learning_rate=1e-3, warmup_steps=10, decay_steps=90
    )
    float(schedule(10))  # 0.001
    ```
    """

    def __init__(
        self,
        learning_rate,
        warmup_steps=0,
        decay_steps=1,
        end_learning_rate=0.0,
        name="LinearDecayWithWarmup",
    ):
        if warmup_steps < 0 or decay_steps < 1:
            raise ValueError(
                "`LinearDecayWithWarmup` expects warmup_steps >= 0 and "
                f"decay_steps >= 1. Received: warmup_steps={warmup_steps}, "
                f"decay_steps={decay_steps}."
            )
        self.learning_rate = learning_rate
        self.warmup_steps = warmup_steps
        self.decay_steps = decay_steps
        self.end_learning_rate = end_learning_rate
        self.name = name

    def __call__(self, step):
        step = ops.cast(step, "float32")
        peak = ops.cast(self.learning_rate, "float32")
        end = ops.cast(self.end_learning_rate, "float32")
        warmup = float(self.warmup_steps)
        warm = peak * step / max(warmup, 1.0)
        done = ops.minimum((step - warmup) / float(self.decay_steps), 1.0)
        decayed = peak + (end - peak) * ops.maximum(done, 0.0)
        return ops.where(step < warmup, warm, decayed)

    def get_config(self):
        return {
            "learning_rate": self.learning_rate,
            "warmup_steps": self.warmup_steps,
            "decay_steps": self.decay_steps,
            "end_learning_rate": self.end_learning_rate,
            "name": self.name,
        }
