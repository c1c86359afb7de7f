"""`for_pretraining`: the usual language-model optimizer in one call.

AdamW (decoupled weight decay, not on biases, norms and embeddings),
gradient clipping by global norm, a linear warm-up followed by cosine (Keras'
`CosineDecay` with `warmup_target`) or linear decay, and optionally gradient
accumulation, whose wrapper lets the schedule count real updates.
"""

import keras

from keras_llm.optimizers.adamw import NO_DECAY_NAMES
from keras_llm.optimizers.adamw import AdamW
from keras_llm.optimizers.gradient_accumulation import GradientAccumulation
from keras_llm.optimizers.linear_decay_with_warmup import LinearDecayWithWarmup

SCHEDULES = ("cosine", "linear", "constant")


def _check(name, value, low, inclusive=True):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"`for_pretraining` expects a number for `{name}`.")
    if value < low or (not inclusive and value == low):
        bound = ">=" if inclusive else ">"
        raise ValueError(
            f"`for_pretraining` expects `{name}` {bound} {low}. "
            f"Received: {name}={value}."
        )


def learning_rate_schedule(
    total_steps,
    learning_rate=6e-4,
    warmup_steps=None,
    schedule="cosine",
    min_learning_rate=None,
):
    """The warm-up-then-decay schedule `for_pretraining` uses.

    Args:
        total_steps: int. Optimizer updates of the whole run (with
            gradient accumulation: updates, not micro-batches).
        learning_rate: float. Peak learning rate. Defaults to `6e-4`.
        warmup_steps: int or `None`. Linear warm-up updates; `None` means
            5% of `total_steps`. Defaults to `None`.
        schedule: `"cosine"`, `"linear"` or `"constant"` (warm-up, then
            flat). Defaults to `"cosine"`.
        min_learning_rate: float or `None`. Learning rate at the end of the
            decay; `None` means `learning_rate / 10`. Defaults to `None`.

    Returns:
        A `keras.optimizers.schedules.LearningRateSchedule`.
    """
    if isinstance(total_steps, bool) or not isinstance(total_steps, int):
        raise ValueError(
            "`for_pretraining` expects `total_steps` to be an int. "
            f"Received: {total_steps!r}."
        )
    _check("total_steps", total_steps, 1)
    _check("learning_rate", learning_rate, 0, inclusive=False)
    if warmup_steps is None:
        warmup_steps = total_steps // 20
    _check("warmup_steps", warmup_steps, 0)
    if warmup_steps >= total_steps:
        raise ValueError(
            f"`for_pretraining` expects warmup_steps ({warmup_steps}) < "
            f"total_steps ({total_steps})."
        )
    if min_learning_rate is None:
        min_learning_rate = learning_rate / 10
    _check("min_learning_rate", min_learning_rate, 0)
    if min_learning_rate > learning_rate:
        raise ValueError(
            f"`for_pretraining` expects min_learning_rate "
            f"({min_learning_rate}) <= learning_rate ({learning_rate})."
        )
    if schedule not in SCHEDULES:
        raise ValueError(
            f"`for_pretraining` expects `schedule` in {SCHEDULES}. "
            f"Received: {schedule!r}."
        )
    decay_steps = total_steps - warmup_steps
    if schedule == "cosine":
        return keras.optimizers.schedules.CosineDecay(
            initial_learning_rate=0.0,
            warmup_target=learning_rate,
            warmup_steps=warmup_steps,
            decay_steps=decay_steps,
            alpha=min_learning_rate / learning_rate,
        )
    end = min_learning_rate if schedule == "linear" else learning_rate
    return LinearDecayWithWarmup(
        learning_rate=learning_rate,
        warmup_steps=warmup_steps,
        decay_steps=decay_steps,
        end_learning_rate=end,
    )


def for_pretraining(
    total_steps,
    learning_rate=6e-4,
    warmup_steps=None,
    schedule="cosine",
    min_learning_rate=None,
    weight_decay=0.1,
    beta_1=0.9,
    beta_2=0.95,
    epsilon=1e-8,
    clipnorm=1.0,
    accumulation_steps=1,
    no_decay_names=NO_DECAY_NAMES,
):
    """AdamW with warm-up and decay, clipping and optional accumulation.

    The defaults are GPT-2/3-style pretraining settings (peak 6e-4, betas
    0.9/0.95, weight decay 0.1 on matmul weights only, global-norm clip
    1.0, 5% warm-up, cosine decay to a tenth).

    Args:
        total_steps: int. Optimizer updates of the run; with
            `accumulation_steps=k`, `fit` runs `k * total_steps`
            micro-batches.
        learning_rate: float. Peak learning rate. Defaults to `6e-4`.
        warmup_steps: int or `None`. Warm-up updates; `None` is 5% of
            `total_steps`. Defaults to `None`.
        schedule: `"cosine"`, `"linear"` or `"constant"`. Defaults to
            `"cosine"`.
        min_learning_rate: float or `None`. Final learning rate; `None` is
            `learning_rate / 10`. Defaults to `None`.
        weight_decay: float. Decoupled weight decay. Defaults to `0.1`.
        beta_1: float. Defaults to `0.9`.
        beta_2: float. Defaults to `0.95`.
        epsilon: float. Defaults to `1e-8`.
        clipnorm: float or `None`. Clip the gradients to this global norm
            (`global_clipnorm`); `None` or 0 disables. Defaults to `1.0`.
        accumulation_steps: int. Micro-batches per update; above 1 the
            AdamW is wrapped in `GradientAccumulation`. Defaults to `1`.
        no_decay_names: regular expressions of variable names without
            weight decay. Defaults to `NO_DECAY_NAMES` (biases, norms,
            embeddings).

    Returns:
        A `keras_llm.optimizers.AdamW`, or a `GradientAccumulation` around
        one.

    Example:

    ```python
    import keras_llm

    optimizer = keras_llm.optimizers.for_pretraining(
        total_steps=1000, learning_rate=1e-3, accumulation_steps=4
    )
    ```
    """
    schedule_fn = learning_rate_schedule(
        total_steps, learning_rate, warmup_steps, schedule, min_learning_rate
    )
    _check("weight_decay", weight_decay, 0)
    if clipnorm is not None:
        _check("clipnorm", clipnorm, 0)
    optimizer = AdamW(
        learning_rate=schedule_fn,
        weight_decay=weight_decay,
        beta_1=beta_1,
        beta_2=beta_2,
        epsilon=epsilon,
        global_clipnorm=clipnorm or None,
        no_decay_names=no_decay_names,
    )
    if accumulation_steps != 1:
        return GradientAccumulation(optimizer, accumulation_steps)
    return optimizer
