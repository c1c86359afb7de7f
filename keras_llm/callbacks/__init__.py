"""Training callbacks: throughput and MFU, generated samples, loss curves."""

from keras_llm.callbacks.loss_curve import LossCurve
from keras_llm.callbacks.sample_generator import SampleGenerator
from keras_llm.callbacks.throughput_meter import ThroughputMeter
from keras_llm.callbacks.throughput_meter import flops_per_token

__all__ = ["LossCurve", "SampleGenerator", "ThroughputMeter", "flops_per_token"]
