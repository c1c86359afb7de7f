"""Optimizers and schedules for language-model training."""

from keras_llm.optimizers.adamw import NO_DECAY_NAMES
from keras_llm.optimizers.adamw import AdamW
from keras_llm.optimizers.gradient_accumulation import GradientAccumulation
from keras_llm.optimizers.linear_decay_with_warmup import LinearDecayWithWarmup
from keras_llm.optimizers.pretraining import for_pretraining
from keras_llm.optimizers.pretraining import learning_rate_schedule

__all__ = [
    "NO_DECAY_NAMES",
    "AdamW",
    "GradientAccumulation",
    "LinearDecayWithWarmup",
    "for_pretraining",
    "learning_rate_schedule",
]
