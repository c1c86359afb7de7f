"""Training callbacks: throughput and MFU, generated samples, loss curves,
step-exact checkpoints and NaN stops."""

from keras_llm.callbacks.checkpoint_manager import CheckpointManager
from keras_llm.callbacks.loss_curve import LossCurve
from keras_llm.callbacks.sample_generator import SampleGenerator
from keras_llm.callbacks.step_checkpoint import StepCheckpoint
from keras_llm.callbacks.terminate_on_nan import TerminateOnNaN
from keras_llm.callbacks.throughput_meter import ThroughputMeter
from keras_llm.callbacks.throughput_meter import flops_per_token

__all__ = [
    "CheckpointManager",
    "LossCurve",
    "SampleGenerator",
    "StepCheckpoint",
    "TerminateOnNaN",
    "ThroughputMeter",
    "flops_per_token",
]
