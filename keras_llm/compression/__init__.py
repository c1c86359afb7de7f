"""Compression for Keras 3 models: pruning, quantization, distillation,
low-rank factorization (see each module's docstring)."""

from keras_llm.compression.distillation import Distiller
from keras_llm.compression.distillation import MaskedLogitsDistillation
from keras_llm.compression.distillation import attention_probabilities
from keras_llm.compression.low_rank import FactorizationReport
from keras_llm.compression.low_rank import LowRankDense
from keras_llm.compression.low_rank import LowRankEinsumDense
from keras_llm.compression.low_rank import LowRankModel
from keras_llm.compression.low_rank import factorize
from keras_llm.compression.pruning import PruneLowMagnitude
from keras_llm.compression.pruning import PruningSummaries
from keras_llm.compression.pruning import UpdatePruningStep
from keras_llm.compression.pruning import print_sparsity_report
from keras_llm.compression.pruning import prune_low_magnitude
from keras_llm.compression.pruning import sparsity_report
from keras_llm.compression.pruning import strip_pruning
from keras_llm.compression.quantization import ActivationQuantizer
from keras_llm.compression.quantization import QuantizationReport
from keras_llm.compression.quantization import QuantizeAwareDense
from keras_llm.compression.quantization import QuantizeAwareEinsumDense
from keras_llm.compression.quantization import QuantizedActivation
from keras_llm.compression.quantization import convert_qat
from keras_llm.compression.quantization import quantize_aware
from keras_llm.compression.quantization import quantize_weights
from keras_llm.compression.quantization import to_tflite
from keras_llm.compression.quantization import weight_bytes

__all__ = [
    "ActivationQuantizer",
    "Distiller",
    "FactorizationReport",
    "LowRankDense",
    "LowRankEinsumDense",
    "LowRankModel",
    "MaskedLogitsDistillation",
    "PruneLowMagnitude",
    "PruningSummaries",
    "QuantizationReport",
    "QuantizeAwareDense",
    "QuantizeAwareEinsumDense",
    "QuantizedActivation",
    "UpdatePruningStep",
    "attention_probabilities",
    "convert_qat",
    "factorize",
    "print_sparsity_report",
    "prune_low_magnitude",
    "quantize_aware",
    "quantize_weights",
    "sparsity_report",
    "strip_pruning",
    "to_tflite",
    "weight_bytes",
]
