"""Quantization for Keras 3: quantization-aware training, int8/int4 weights,
TFLite export.

Which library does the work:

- Fake quantization is `keras.quantizers.fake_quant_with_min_max_vars`
  (TensorFlow's `FakeQuantWithMinMaxVars` ops on the TF backend, with
  straight-through gradients, so the TFLite converter reads the ranges).
- Post-training and converted int8/int4 layers are Keras' own
  (`Model.quantize`: int8 `Dense`/`EinsumDense` with per-channel scales).
- TFLite models come from `tf.lite.TFLiteConverter` on a
  `model.export(..., format="tf_saved_model")` export.
- tf_keras models (built with `TF_USE_LEGACY_KERAS=1`) go to
  `tfmot.quantization.keras.quantize_model`.

What is hand-written and why: tensorflow-model-optimization's
`quantize_model` and its quantizers reject Keras 3 models, and Keras 3 has
no int8 quantization-aware training. So the QAT layers here are ours, and
they follow tfmot's default 8-bit scheme so that a model trained with either
gives the same numbers: weights symmetric with the narrow range
`[-127, 127]` (per channel by default here; tfmot's `Dense` default is per
tensor: `per_channel=False`), layer outputs asymmetric per tensor with
ranges tracked by an exponential moving average during training (tfmot's
`MovingAverageQuantizer`: ranges start at `[-6, 6]`, decay `0.999`) and
frozen at inference, and the inputs of a quantized layer that do not come
from another quantized layer tracked by their running min/max (tfmot's
`QuantizeLayer` with an `AllValuesQuantizer`).

`quantize_aware` swaps each `Dense`/`EinsumDense` of a copy of the model for
its quantize-aware subclass in place, so it reaches the layers nested in
subclassed layers (e.g. the attention and feed-forward of a `GPT` block)
as well as those of a Functional or Sequential model. Both kinds save and
load as `.keras`, QAT and converted: a Functional or Sequential model
through its layers' configs, and keras_llm's subclassed models (`GPT`,
`BERT`, `EncoderDecoder`), whose parents rebuild plain `Dense` layers,
through a per-path `"sublayers"` entry of their config
(`keras_llm.models.dtypes`) that makes the rebuilt layers quantize-aware
again, or gives them back their folded output ranges, before the weights
load.
"""

import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass

import keras
import numpy as np
from keras import ops

_WEIGHT_BITS = (4, 8)
_ACTIVATION_BITS = (8,)
_QAT_PACKAGE = "keras_llm"


# --------------------------------------------------------------------------
# Layers
# --------------------------------------------------------------------------


@keras.saving.register_keras_serializable(package=_QAT_PACKAGE)
class ActivationQuantizer(keras.layers.Layer):
    """Fake-quantizes a tensor per tensor with a range learned from data.

    In training the range follows the batches (`mode="ema"`: an exponential
    moving average of each batch's min/max, as tfmot's
    `MovingAverageQuantizer`; `mode="all_values"`: the running min/max of
    every value seen, as tfmot's `AllValuesQuantizer`), always including
    zero; at inference it is frozen. Quantization is asymmetric over
    `2**num_bits` levels.

    Args:
        num_bits: int. Bits of the quantized values. Defaults to `8`.
        mode: `"ema"` or `"all_values"`. Defaults to `"ema"`.
        ema_decay: float. Decay of the moving average. Defaults to `0.999`.
        initial_range: `(min, max)` the `"ema"` range starts from, or `None`
            to start from the first training batch's range. Defaults to
            `(-6.0, 6.0)` (tfmot's).
        **kwargs: `keras.layers.Layer` arguments.

    Example:

    >>> quantizer = ActivationQuantizer(initial_range=(-1.0, 1.0))
    >>> y = quantizer(np.array([[0.3, -2.0]], "float32"))
    >>> [round(float(v), 3) for v in np.asarray(y)[0]]
    [0.298, -0.996]
    """

    def __init__(
        self,
        num_bits=8,
        mode="ema",
        ema_decay=0.999,
        initial_range=(-6.0, 6.0),
        **kwargs,
    ):
        super().__init__(**kwargs)
        if mode not in ("ema", "all_values"):
            raise ValueError(
                f"`ActivationQuantizer` got mode={mode!r}; expected 'ema' "
                "or 'all_values'."
            )
        _check_bits("ActivationQuantizer", "num_bits", num_bits, (8,))
        if not 0.0 <= ema_decay < 1.0:
            raise ValueError(
                f"`ActivationQuantizer` got ema_decay={ema_decay}; expected "
                "a float in [0, 1)."
            )
        if initial_range is not None:
            low, high = (float(v) for v in initial_range)
            if not low <= 0.0 <= high:
                raise ValueError(
                    "`ActivationQuantizer` got initial_range="
                    f"{initial_range}; expected (min, max) with "
                    "min <= 0 <= max."
                )
            initial_range = (low, high)
        self.num_bits = num_bits
        self.mode = mode
        self.ema_decay = ema_decay
        self.initial_range = initial_range

    def build(self, input_shape=None):
        low, high = self.initial_range or (0.0, 0.0)
        if self.mode == "all_values":
            low, high = 0.0, 0.0
        self.range_min = self.add_weight(
            shape=(),
            initializer=keras.initializers.Constant(low),
            trainable=False,
            dtype="float32",
            name="min",
        )
        self.range_max = self.add_weight(
            shape=(),
            initializer=keras.initializers.Constant(high),
            trainable=False,
            dtype="float32",
            name="max",
        )
        self.batches_seen = self.add_weight(
            shape=(),
            initializer="zeros",
            trainable=False,
            dtype="float32",
            name="batches_seen",
        )

    def call(self, inputs, training=None):
        low = self.range_min.value
        high = self.range_max.value
        if training:
            values = ops.stop_gradient(ops.cast(inputs, "float32"))
            batch_min = ops.minimum(ops.min(values), 0.0)
            batch_max = ops.maximum(ops.max(values), 0.0)
            if self.mode == "all_values":
                low = ops.minimum(low, batch_min)
                high = ops.maximum(high, batch_max)
            else:
                rate = 1.0 - self.ema_decay  # tfmot's assign_moving_average
                ema_min = low - (low - batch_min) * rate
                ema_max = high - (high - batch_max) * rate
                if self.initial_range is None:
                    first = ops.equal(self.batches_seen.value, 0.0)
                    ema_min = ops.where(first, batch_min, ema_min)
                    ema_max = ops.where(first, batch_max, ema_max)
                low, high = ema_min, ema_max
            self.range_min.assign(low)
            self.range_max.assign(high)
            self.batches_seen.assign_add(1.0)
        return keras.quantizers.fake_quant_with_min_max_vars(
            inputs, low, high, num_bits=self.num_bits, narrow_range=False
        )

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            num_bits=self.num_bits,
            mode=self.mode,
            ema_decay=self.ema_decay,
            initial_range=self.initial_range,
        )
        return config


@keras.saving.register_keras_serializable(package=_QAT_PACKAGE)
class QuantizedActivation:
    """An activation followed by fake quantization to a fixed range.

    `convert_qat` makes each quantize-aware layer's activation one of these,
    so the converted model keeps the output grid learned in training.

    Args:
        activation: activation name or callable. Defaults to `None`
            (linear).
        range_min: float. Lower end of the range. Defaults to `-6.0`.
        range_max: float. Upper end of the range. Defaults to `6.0`.
        num_bits: int. Bits. Defaults to `8`.

    Example:

    >>> act = QuantizedActivation("relu", 0.0, 1.0)
    >>> [round(float(v), 4) for v in np.asarray(act(np.array([0.5, 2.0])))]
    [0.498, 1.0]
    """

    def __init__(self, activation=None, range_min=-6.0, range_max=6.0,
                 num_bits=8):  # fmt: skip
        self.activation = keras.activations.get(activation)
        self.range_min = float(range_min)
        self.range_max = float(range_max)
        self.num_bits = num_bits

    def __call__(self, x):
        return keras.quantizers.fake_quant_with_min_max_vars(
            self.activation(x),
            self.range_min,
            self.range_max,
            num_bits=self.num_bits,
        )

    def get_config(self):
        return {
            "activation": keras.activations.serialize(self.activation),
            "range_min": self.range_min,
            "range_max": self.range_max,
            "num_bits": self.num_bits,
        }

    @classmethod
    def from_config(cls, config):
        return cls(**config)


class _QuantizeAwareMixin:
    """Fake-quantized kernel, input and output for Dense and EinsumDense."""

    _FLOAT_CLASS = None

    def _setup_quantization(
        self,
        weight_bits,
        activation_bits,
        per_channel,
        ema_decay,
        initial_range,
        quantize_inputs,
        input_quantization="static",
    ):
        name = type(self).__name__
        _check_input_quantization(name, input_quantization)
        self.input_quantization = input_quantization
        if input_quantization == "dynamic":
            quantize_inputs = True
        _check_bits(name, "weight_bits", weight_bits, _WEIGHT_BITS)
        _check_bits(name, "activation_bits", activation_bits, _ACTIVATION_BITS)
        if getattr(self, "lora_enabled", False):
            raise ValueError(
                f"Layer '{self.name}' has LoRA enabled; merge or disable "
                "it before quantization-aware training."
            )
        self.weight_bits = weight_bits
        self.activation_bits = activation_bits
        self.per_channel = per_channel
        self.ema_decay = ema_decay
        self.initial_range = (
            None if initial_range is None else tuple(initial_range)
        )
        self.quantize_inputs = quantize_inputs
        self.input_quantizer = None
        if quantize_inputs and input_quantization == "static":
            self.input_quantizer = ActivationQuantizer(
                activation_bits,
                mode="all_values",
                ema_decay=ema_decay,
                initial_range=None,
                name="input_quantizer",
            )
        self.output_quantizer = ActivationQuantizer(
            activation_bits,
            mode="ema",
            ema_decay=ema_decay,
            initial_range=initial_range,
            name="output_quantizer",
        )

    def build(self, input_shape):
        super().build(input_shape)
        self._build_quantizers()

    def get_config(self):
        return {**super().get_config(), **self._quantization_config()}

    def _build_quantizers(self):
        with keras.name_scope(self.name, caller=self):
            for quantizer in (self.input_quantizer, self.output_quantizer):
                if quantizer is not None and not quantizer.built:
                    quantizer.build()

    def _channel_axes(self):
        """Kernel axes that index output channels."""
        return (len(self.kernel.shape) - 1,)

    def quantized_kernel(self):
        """The kernel fake-quantized symmetrically with the narrow range
        (`[-127, 127]` for 8 bits), per output channel or per tensor; its
        range comes from the kernel itself (tfmot's `LastValueQuantizer`)
        and passes no gradient."""
        kernel = self.kernel
        rank = len(kernel.shape)
        channels = self._channel_axes() if self.per_channel else ()
        if not channels:
            bound = ops.stop_gradient(ops.max(ops.abs(kernel)))
            bound = ops.maximum(bound, 1e-8)
            return keras.quantizers.fake_quant_with_min_max_vars(
                kernel, -bound, bound, self.weight_bits, narrow_range=True
            )
        reduce = tuple(a for a in range(rank) if a not in channels)
        order = reduce + tuple(channels)
        moved = (
            ops.transpose(kernel, order)
            if order != tuple(range(rank))
            else kernel
        )
        shape = ops.shape(moved)
        flat = ops.reshape(
            moved, (-1, int(np.prod(moved.shape[len(reduce) :])))
        )
        bound = ops.stop_gradient(ops.max(ops.abs(flat), axis=0))
        bound = ops.maximum(bound, 1e-8)
        flat = keras.quantizers.fake_quant_with_min_max_vars(
            flat, -bound, bound, self.weight_bits, narrow_range=True, axis=-1
        )
        moved = ops.reshape(flat, shape)
        if order == tuple(range(rank)):
            return moved
        return ops.transpose(moved, tuple(int(i) for i in np.argsort(order)))

    def _product(self, inputs, kernel):
        raise NotImplementedError

    def _input_reduction_axes(self):
        return (-1,)

    def _dynamic_input_quant(self, inputs):
        """Keras' int8 input quantization (per row, symmetric, abs-max),
        faked with a straight-through gradient."""
        axis = self._input_reduction_axes()
        values, scale = keras.quantizers.abs_max_quantize(inputs, axis=axis)
        values = ops.divide(ops.cast(values, inputs.dtype), scale)
        return inputs + ops.stop_gradient(values - inputs)

    def call(self, inputs, training=None):
        if self.input_quantization == "dynamic":
            inputs = self._dynamic_input_quant(inputs)
        elif self.input_quantizer is not None:
            inputs = self.input_quantizer(inputs, training=training)
        kernel = ops.cast(self.quantized_kernel(), self.compute_dtype)
        x = self._product(inputs, kernel)
        if self.bias is not None:
            x = ops.add(x, self.bias)
        if self.activation is not None:
            x = self.activation(x)
        return self.output_quantizer(x, training=training)

    @classmethod
    def quantize_in_place(cls, layer, **settings):
        """Makes a built float layer of `cls._FLOAT_CLASS` this class, in
        place, keeping its weights; `settings` are `_quantization_config`'s
        keys. Used by `quantize_aware` and when a model whose config lists
        quantize-aware sublayers is rebuilt (`keras_llm.models.dtypes`)."""
        if type(layer) is not cls._FLOAT_CLASS:
            raise ValueError(
                f"Layer '{layer.name}' is a {type(layer).__name__}; "
                f"{cls.__name__} replaces a {cls._FLOAT_CLASS.__name__}."
            )
        layer.__class__ = cls
        layer._tracker.unlock()
        try:
            layer._setup_quantization(
                settings["weight_bits"],
                settings["activation_bits"],
                settings["per_channel"],
                settings["ema_decay"],
                settings["initial_range"],
                settings["quantize_inputs"],
                settings.get("input_quantization", "static"),
            )
            layer._build_quantizers()
        finally:
            layer._tracker.lock()
        return layer

    def _quantization_config(self):
        return {
            "weight_bits": self.weight_bits,
            "activation_bits": self.activation_bits,
            "per_channel": self.per_channel,
            "ema_decay": self.ema_decay,
            "initial_range": self.initial_range,
            "quantize_inputs": self.quantize_inputs,
            "input_quantization": self.input_quantization,
        }


@keras.saving.register_keras_serializable(package=_QAT_PACKAGE)
class QuantizeAwareDense(_QuantizeAwareMixin, keras.layers.Dense):
    """`keras.layers.Dense` with fake-quantized kernel, input and output.

    Made by `quantize_aware`; trains in `fit` with straight-through
    gradients and is turned into a Keras int8 `Dense` by `convert_qat`.

    Args:
        units: int. Output width, as `keras.layers.Dense`.
        weight_bits: int, 8 or 4. Kernel bits. Defaults to `8`.
        activation_bits: int, 8. Input/output bits. Defaults to `8`.
        per_channel: bool. One kernel range per output unit, else one for
            the kernel. Defaults to `True`.
        ema_decay: float. Output range moving-average decay. Defaults to
            `0.999`.
        initial_range: `(min, max)` the output range starts from or `None`
            (first batch). Defaults to `(-6.0, 6.0)`.
        quantize_inputs: bool. Also fake-quantize the input. Defaults to
            `True`.
        **kwargs: `keras.layers.Dense` arguments.

    Example:

    >>> layer = QuantizeAwareDense(3)
    >>> tuple(layer(np.ones((2, 4), "float32")).shape)
    (2, 3)
    """

    _FLOAT_CLASS = keras.layers.Dense

    def __init__(
        self,
        units,
        weight_bits=8,
        activation_bits=8,
        per_channel=True,
        ema_decay=0.999,
        initial_range=(-6.0, 6.0),
        quantize_inputs=True,
        input_quantization="static",
        **kwargs,
    ):
        super().__init__(units, **kwargs)
        self._setup_quantization(
            weight_bits,
            activation_bits,
            per_channel,
            ema_decay,
            initial_range,
            quantize_inputs,
            input_quantization,
        )

    def _product(self, inputs, kernel):
        return ops.matmul(inputs, kernel)


@keras.saving.register_keras_serializable(package=_QAT_PACKAGE)
class QuantizeAwareEinsumDense(_QuantizeAwareMixin, keras.layers.EinsumDense):
    """`keras.layers.EinsumDense` with fake-quantized kernel, input, output.

    The kernel is quantized per output channel: one range for each index
    of the kernel axes that appear in the output.

    Args:
        equation: str. As `keras.layers.EinsumDense`.
        output_shape: int or tuple. As `keras.layers.EinsumDense`.
        weight_bits: int, 8 or 4. Kernel bits. Defaults to `8`.
        activation_bits: int, 8. Input/output bits. Defaults to `8`.
        per_channel: bool. Per output channel kernel ranges. Defaults to
            `True`.
        ema_decay: float. Output range moving-average decay. Defaults to
            `0.999`.
        initial_range: `(min, max)` the output range starts from or `None`.
            Defaults to `(-6.0, 6.0)`.
        quantize_inputs: bool. Also fake-quantize the input. Defaults to
            `True`.
        **kwargs: `keras.layers.EinsumDense` arguments.

    Example:

    >>> layer = QuantizeAwareEinsumDense("abc,cd->abd", (None, 3))
    >>> tuple(layer(np.ones((2, 5, 4), "float32")).shape)
    (2, 5, 3)
    """

    _FLOAT_CLASS = keras.layers.EinsumDense

    def __init__(
        self,
        equation,
        output_shape,
        weight_bits=8,
        activation_bits=8,
        per_channel=True,
        ema_decay=0.999,
        initial_range=(-6.0, 6.0),
        quantize_inputs=True,
        input_quantization="static",
        **kwargs,
    ):
        super().__init__(equation, output_shape, **kwargs)
        self._setup_quantization(
            weight_bits,
            activation_bits,
            per_channel,
            ema_decay,
            initial_range,
            quantize_inputs,
            input_quantization,
        )

    def _channel_axes(self):
        inputs, output = self.equation.split("->")
        kernel = inputs.split(",")[1].strip()
        return tuple(i for i, c in enumerate(kernel) if c in output)

    def _input_reduction_axes(self):
        inputs, output = self.equation.split("->")
        spec = inputs.split(",")[0].strip()
        return tuple(i for i, c in enumerate(spec) if c not in output)

    def _product(self, inputs, kernel):
        return ops.einsum(self.equation, inputs, kernel)


_QAT_CLASSES = {
    keras.layers.Dense: QuantizeAwareDense,
    keras.layers.EinsumDense: QuantizeAwareEinsumDense,
}


# --------------------------------------------------------------------------
# quantize_aware / convert_qat
# --------------------------------------------------------------------------


def _check_bits(owner, argument, value, allowed):
    if isinstance(value, bool) or value not in allowed:
        raise ValueError(
            f"`{owner}` got {argument}={value!r}; supported: "
            f"{', '.join(str(a) for a in allowed)}."
        )


def _check_input_quantization(owner, value):
    if value not in ("static", "dynamic"):
        raise ValueError(
            f"`{owner}` got input_quantization={value!r}; expected "
            "'static' or 'dynamic'."
        )


def _is_tf_keras_model(model):
    return type(model).__module__.split(".")[0] in ("tf_keras", "keras_tf")


def _copy_model(model):
    """A new model of the same structure with the same weights."""
    if not model.built:
        raise ValueError(
            f"Model '{model.name}' is not built; call it on data (or give "
            "it an `Input`) before quantizing it."
        )
    copy = _copy_structure(model)
    copy.set_weights(model.get_weights())
    return copy


def _copy_structure(model):
    """A new model of the same structure; a subclass (e.g. `GPT`) keeps its
    class and methods."""
    if type(model) in (keras.Model, keras.Sequential) or (
        type(model).__name__ == "Functional"
    ):
        return keras.models.clone_model(model)
    copy = type(model).from_config(model.get_config())
    if not copy.built:
        copy.build(model.input_shape)
    return copy


def _inner_layers(model):
    return [
        layer
        for layer in model._flatten_layers(include_self=False, recursive=True)
        if not isinstance(layer, ActivationQuantizer)
    ]


def _fed_by_quantized_layer(model, layer):
    """Whether every input of a top-level layer of a Functional/Sequential
    model is the (already quantized) output of another supported layer."""
    if isinstance(model, keras.Sequential):
        layers = model.layers
        if layer not in layers:
            return False
        index = layers.index(layer)
        return index > 0 and type(layers[index - 1]) in _QAT_CLASSES
    if layer not in getattr(model, "operations", []):
        return False
    nodes = [n for n in layer._inbound_nodes if n.parent_nodes]
    if not nodes:
        return False
    return all(
        type(parent.operation) in _QAT_CLASSES
        for node in nodes
        for parent in node.parent_nodes
    )


def quantize_aware(
    model,
    *,
    weight_bits=8,
    activation_bits=8,
    ema_decay=0.999,
    per_channel=True,
    initial_range=(-6.0, 6.0),
    input_quantization="static",
    unsupported="raise",
):
    """Makes a quantization-aware copy of a model for int8 training.

    Every `keras.layers.Dense` and `keras.layers.EinsumDense`, at the top
    level or nested in subclassed layers, becomes a `QuantizeAwareDense` /
    `QuantizeAwareEinsumDense` with the same weights: its kernel is
    fake-quantized symmetrically (`[-127, 127]`), its output asymmetrically
    with a moving-average range, and its input too unless it comes straight
    from another quantized layer (tfmot's default 8-bit scheme). Layers
    without a kernel (embeddings, normalisation, dropout) stay float.
    Compile and `fit` the result as usual; a Functional or Sequential result
    saves and loads as `.keras`.

    A tf_keras model (one built with `TF_USE_LEGACY_KERAS=1`) goes to
    `tfmot.quantization.keras.quantize_model` instead, with tfmot's defaults.

    Args:
        model: a built Keras model.
        weight_bits: int, 8 or 4. Kernel bits. Defaults to `8`.
        activation_bits: int, 8. Activation bits. Defaults to `8`.
        ema_decay: float in [0, 1). Decay of the output ranges' moving
            average (tfmot's `MovingAverageQuantizer` uses `0.999`).
            Defaults to `0.999`.
        per_channel: bool. One kernel range per output channel, else one per
            kernel (tfmot's `Dense` default). Defaults to `True`.
        initial_range: `(min, max)` the output ranges start from (tfmot's
            `(-6, 6)`), or `None` to start from the first training batch
            (better when fine-tuning a pretrained model for few steps).
            Defaults to `(-6.0, 6.0)`.
        input_quantization: `"static"`: a layer input not produced by
            another quantized layer is fake-quantized per tensor with its
            running min/max (tfmot's and TFLite's int8 scheme; use it for
            `to_tflite`). `"dynamic"`: every quantized layer's input is
            fake-quantized per row, symmetric, from its own abs-max, as
            Keras' int8 layers do at inference (use it for `convert_qat`:
            the converted model then matches the QAT model to one step).
            Defaults to `"static"`.
        unsupported: `"raise"` or `"skip"`: what to do with a layer that has
            a `kernel` but is not a `Dense`/`EinsumDense` (e.g. `Conv2D`, a
            `Dense` subclass). Defaults to `"raise"`.

    Returns:
        A new quantization-aware `keras.Model`; `model` is left unchanged.

    Raises:
        ValueError: for an unsupported number of bits, an unbuilt model, or
            (with `unsupported="raise"`) a layer that cannot be quantized,
            which the message names.

    Example:

    >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    >>> qat = quantize_aware(model)
    >>> qat.compile(optimizer="sgd", loss="mse")
    >>> _ = qat.fit(np.ones((8, 4)), np.ones((8, 2)), verbose=0)
    >>> type(qat.layers[0]).__name__
    'QuantizeAwareDense'
    """
    _check_bits("quantize_aware", "weight_bits", weight_bits, _WEIGHT_BITS)
    _check_bits(
        "quantize_aware", "activation_bits", activation_bits, _ACTIVATION_BITS
    )
    _check_input_quantization("quantize_aware", input_quantization)
    if unsupported not in ("raise", "skip"):
        raise ValueError(
            f"`quantize_aware` got unsupported={unsupported!r}; expected "
            "'raise' or 'skip'."
        )
    # By the model's type, not TF_USE_LEGACY_KERAS: importing tfmot (for a
    # pruning schedule, say) sets that variable for the whole process.
    if _is_tf_keras_model(model):
        options = (weight_bits, activation_bits, ema_decay, initial_range)
        if options != (8, 8, 0.999, (-6.0, 6.0)) or (
            input_quantization != "static"
        ):
            warnings.warn(
                "tf_keras model: tfmot's quantize_model uses its default "
                "8-bit scheme (per-tensor Dense kernels); the options "
                "given are ignored.",
                stacklevel=2,
            )
        import tensorflow_model_optimization as tfmot

        return tfmot.quantization.keras.quantize_model(model)
    if not isinstance(model, keras.Model):
        raise TypeError(
            "`quantize_aware` expects a keras.Model; got "
            f"{type(model).__name__}."
        )
    if isinstance(model, tuple(_QAT_CLASSES.values())):
        raise ValueError(f"Model '{model.name}' is already quantize-aware.")

    # Check before copying so that the error comes fast.
    targets = []
    for layer in _inner_layers(model):
        if isinstance(layer, tuple(_QAT_CLASSES.values())):
            raise ValueError(
                f"Layer '{layer.name}' is already quantize-aware; pass the "
                "float model."
            )
        if type(layer) in _QAT_CLASSES:
            targets.append(layer)
        elif (
            unsupported == "raise"
            and getattr(layer, "kernel", None) is not None
            and not list(layer._flatten_layers(include_self=False))
        ):
            raise ValueError(
                f"Layer '{layer.name}' ({type(layer).__name__}) has a kernel "
                "that quantize_aware cannot fake-quantize (supported: Dense, "
                "EinsumDense); pass unsupported='skip' to leave it float."
            )
    if not targets:
        raise ValueError(
            f"Model '{model.name}' has no Dense or EinsumDense layer to "
            "quantize."
        )

    copy = _copy_model(model)
    targets = [
        (layer, not _fed_by_quantized_layer(copy, layer))
        for layer in _inner_layers(copy)
        if type(layer) in _QAT_CLASSES
    ]
    for layer, quantize_inputs in targets:
        _QAT_CLASSES[type(layer)].quantize_in_place(
            layer,
            weight_bits=weight_bits,
            activation_bits=activation_bits,
            per_channel=per_channel,
            ema_decay=ema_decay,
            initial_range=initial_range,
            quantize_inputs=quantize_inputs,
            input_quantization=input_quantization,
        )
    return copy


def _qat_layers(model):
    return [
        layer
        for layer in _inner_layers(model)
        if isinstance(layer, _QuantizeAwareMixin)
    ]


def convert_qat(model):
    """Converts a quantization-aware model to a Keras int8 (or int4) model.

    Each quantize-aware layer becomes the plain `Dense`/`EinsumDense` it
    came from, with its kernel folded to the fake-quantized values and its
    learned output range folded into its activation (a
    `QuantizedActivation`); then Keras' `Model.quantize` makes those layers
    (only those) int8 (or int4, per channel): the integer kernels are
    exactly the QAT grid values with `per_channel=True`. Keras' int8 layers
    quantize their inputs dynamically per row: a model trained with
    `input_quantization="dynamic"` simulated exactly that, and the
    converted model agrees with it to within one output step; with
    `"static"` input ranges (tfmot's, for TFLite) it agrees to a few steps.

    Args:
        model: a model returned by `quantize_aware` (trained or not).

    Returns:
        A new plain Keras model with Keras int8/int4 layers.

    Raises:
        ValueError: if `model` has no quantize-aware layer.

    Example:

    >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    >>> int8 = convert_qat(quantize_aware(model))
    >>> int8.layers[0].quantization_mode
    'int8'
    """
    qat_layers = _qat_layers(model)
    if not qat_layers:
        raise ValueError(
            f"Model '{model.name}' has no quantize-aware layer; call "
            "quantize_aware first (or quantize_weights for a float model)."
        )
    bits = {layer.weight_bits for layer in qat_layers}
    if len(bits) > 1:
        raise ValueError(
            f"Model '{model.name}' mixes weight bits {sorted(bits)}."
        )
    folded = {
        id(layer.kernel): layer.quantized_kernel() for layer in qat_layers
    }
    quantizer_vars = {
        id(v)
        for layer in model._flatten_layers(include_self=False)
        if isinstance(layer, ActivationQuantizer)
        for v in layer.weights
    }

    # The float config: each QAT layer reports its float class's config,
    # with its output range folded into its activation.
    saved = [(layer, layer.__class__, layer.activation) for layer in qat_layers]
    try:
        for layer, _, activation in saved:
            quantizer = layer.output_quantizer
            layer.activation = QuantizedActivation(
                activation,
                float(quantizer.range_min.numpy()),
                float(quantizer.range_max.numpy()),
                quantizer.num_bits,
            )
            layer.__class__ = layer._FLOAT_CLASS
        float_model = _copy_structure(model)
    finally:
        for layer, cls, activation in saved:
            layer.__class__ = cls
            layer.activation = activation
    sources = [v for v in model.weights if id(v) not in quantizer_vars]
    targets = float_model.weights
    if len(sources) != len(targets):
        raise ValueError(
            f"Model '{model.name}': the float copy has {len(targets)} "
            f"weights, the QAT model {len(sources)}; cannot convert."
        )
    kernels = {}
    for target, source in zip(targets, sources):
        if id(source) in folded:
            kernels[id(target)] = id(source)
        value = folded.get(id(source), source)
        target.assign(ops.convert_to_numpy(value))
    # Nested layers are rebuilt by their parents from the parents' config:
    # give them their output range here.
    by_kernel = {id(layer.kernel): layer for layer in qat_layers}
    for layer in float_model._flatten_layers(include_self=False):
        source = by_kernel.get(kernels.get(id(getattr(layer, "_kernel", 0))))
        if source is not None:
            quantizer = source.output_quantizer
            layer.activation = QuantizedActivation(
                source.activation,
                float(quantizer.range_min.numpy()),
                float(quantizer.range_max.numpy()),
                quantizer.num_bits,
            )

    # Only the layers trained quantize-aware become int8/int4.
    def trained(layer):
        return id(getattr(layer, "_kernel", None)) in kernels

    if bits.pop() == 8:
        float_model.quantize("int8", filters=trained)
    else:
        config = keras.quantizers.Int4QuantizationConfig(block_size=None)
        float_model.quantize(config=config, filters=trained)
    return float_model


# --------------------------------------------------------------------------
# TFLite
# --------------------------------------------------------------------------


def _representative(dataset):
    """A TFLite representative-dataset callable from arrays or batches."""
    if callable(dataset):
        return dataset
    import tensorflow as tf

    if isinstance(dataset, tf.data.Dataset):
        batches = dataset
    else:
        batches = tf.data.Dataset.from_tensor_slices(np.asarray(dataset))
        batches = batches.batch(1)

    def generate():
        for batch in batches:
            if isinstance(batch, (tuple, list)):
                batch = batch[0]
            yield [tf.cast(batch, tf.float32)]

    return generate


def to_tflite(model, *, mode="dynamic", representative_dataset=None):
    """Converts a float or quantization-aware Keras model to TFLite bytes.

    The model is exported with `model.export(..., format="tf_saved_model")`
    and converted by `tf.lite.TFLiteConverter` with its default
    optimizations. `"dynamic"`: int8 weights, float activations.
    `"int8"`: full-integer kernels and activations (float input/output);
    activation ranges come from the fake-quantization ranges of a model
    from `quantize_aware` and from `representative_dataset`.

    Args:
        model: a Keras model (float or from `quantize_aware`).
        mode: `"dynamic"` or `"int8"`. Defaults to `"dynamic"`.
        representative_dataset: for `"int8"`: input arrays (first axis:
            examples), a `tf.data.Dataset` of input batches (or `(x, y)`
            pairs), or a TFLite generator callable yielding `[input]`.
            Required for a float model. Defaults to `None`.

    Returns:
        The TFLite flatbuffer as `bytes`; run it with
        `tf.lite.Interpreter(model_content=...)`.

    Raises:
        ValueError: for an unknown mode, `"int8"` without data on a float
            model, or `"int8"` on a QAT model with per-channel `Dense`
            kernels (TFLite's converter rejects them: train with
            `per_channel=False`, tfmot's `Dense` scheme).

    Example:

    >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    >>> flatbuffer = to_tflite(model)
    >>> isinstance(flatbuffer, bytes)
    True
    """
    if mode not in ("dynamic", "int8"):
        raise ValueError(
            f"`to_tflite` got mode={mode!r}; expected 'dynamic' or 'int8'."
        )
    if mode == "int8" and representative_dataset is None:
        if not _qat_layers(model):
            raise ValueError(
                "`to_tflite(mode='int8')` needs a representative_dataset "
                "for a model that is not quantize-aware."
            )
    if mode == "int8":
        for layer in _qat_layers(model):
            if layer.per_channel and isinstance(layer, QuantizeAwareDense):
                raise ValueError(
                    f"Layer '{layer.name}' fake-quantizes its kernel per "
                    "channel, which TFLite's converter rejects for Dense "
                    "('tfl.transpose' quantized axes); train with "
                    "quantize_aware(..., per_channel=False) for TFLite."
                )
    import tensorflow as tf

    directory = tempfile.mkdtemp(prefix="keras_llm_tflite_")
    try:
        model.export(directory, format="tf_saved_model", verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(directory)
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        if mode == "int8":
            if representative_dataset is not None:
                converter.representative_dataset = _representative(
                    representative_dataset
                )
            converter.target_spec.supported_ops = [
                tf.lite.OpsSet.TFLITE_BUILTINS_INT8
            ]
        return converter.convert()
    finally:
        shutil.rmtree(directory, ignore_errors=True)


# --------------------------------------------------------------------------
# Post-training weight quantization
# --------------------------------------------------------------------------


def weight_bytes(model):
    """Bytes of all of a model's variables at their stored dtypes (a
    variable reached twice, such as a tied embedding, counts once).

    Args:
        model: a Keras model or layer.

    Returns:
        int: the bytes.

    Example:

    >>> layer = keras.layers.Dense(2)
    >>> layer.build((None, 3))
    >>> weight_bytes(layer)
    32
    """
    unique = {id(v): v for v in model.weights}.values()
    return int(
        sum(int(np.prod(v.shape)) * np.dtype(v.dtype).itemsize for v in unique)
    )


def _file_bytes(model):
    directory = tempfile.mkdtemp(prefix="keras_llm_quantize_")
    try:
        path = os.path.join(directory, "model.keras")
        model.save(path)
        return os.path.getsize(path)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _loss(model, data):
    if data is None:
        return None
    if isinstance(data, tuple):
        result = model.evaluate(*data, verbose=0, return_dict=True)
    else:
        result = model.evaluate(data, verbose=0, return_dict=True)
    return float(result["loss"])


@dataclass
class QuantizationReport:
    """What `quantize_weights` did: sizes and validation loss before/after.

    Attributes:
        mode: `"int8"` or `"int4"`.
        model: the quantized model (a copy; the input is unchanged).
        weight_bytes_before: float model's variable bytes.
        weight_bytes_after: quantized model's variable bytes.
        file_bytes_before: float model's `.keras` file size.
        file_bytes_after: quantized model's `.keras` file size.
        loss_before: float model's validation loss, or `None`.
        loss_after: quantized model's validation loss, or `None`.
    """

    mode: str
    model: object
    weight_bytes_before: int
    weight_bytes_after: int
    file_bytes_before: int
    file_bytes_after: int
    loss_before: float = None
    loss_after: float = None

    @property
    def weight_ratio(self):
        """Weight bytes after over before."""
        return self.weight_bytes_after / self.weight_bytes_before

    @property
    def file_ratio(self):
        """`.keras` bytes after over before."""
        return self.file_bytes_after / self.file_bytes_before

    @property
    def loss_change(self):
        """Relative change of the validation loss, or `None`."""
        if self.loss_before is None:
            return None
        return (self.loss_after - self.loss_before) / abs(self.loss_before)

    def table(self):
        """The report as a `rich.table.Table`."""
        from rich.table import Table

        table = Table(title=f"Weight quantization ({self.mode})")
        for column in ("", "float", self.mode, "ratio"):
            table.add_column(column, justify="right")
        table.add_row(
            "weight bytes",
            f"{self.weight_bytes_before:,}",
            f"{self.weight_bytes_after:,}",
            f"{self.weight_ratio:.3f}x",
        )
        table.add_row(
            ".keras bytes",
            f"{self.file_bytes_before:,}",
            f"{self.file_bytes_after:,}",
            f"{self.file_ratio:.3f}x",
        )
        if self.loss_before is not None:
            table.add_row(
                "validation loss",
                f"{self.loss_before:.4f}",
                f"{self.loss_after:.4f}",
                f"{self.loss_change:+.2%}",
            )
        return table

    def show(self, console=None):
        """Prints the table with `rich`."""
        from rich.console import Console

        (console or Console()).print(self.table())


def quantize_weights(model, mode="int8", validation_data=None):
    """Post-training weight quantization through Keras' `Model.quantize`.

    Quantizes a copy of `model` (`"int8"`: per-channel int8 kernels with
    dynamic int8 inputs; `"int4"`: per-channel int4 kernels, weight-only)
    and measures weight bytes, `.keras` file bytes and, with data, the
    validation loss of both.

    Args:
        model: a built Keras model; compiled (with a loss) when
            `validation_data` is given.
        mode: `"int8"` or `"int4"`. Defaults to `"int8"`.
        validation_data: `None`, a `tf.data.Dataset`/`PyDataset` of
            `(x, y)` batches, or an `(x, y)` tuple of arrays. Defaults to
            `None`.

    Returns:
        A `QuantizationReport` (its `model` is the quantized copy; `show()`
        prints a table).

    Raises:
        ValueError: for an unknown mode, or data with an uncompiled model.

    Example:

    >>> model = keras.Sequential(
    ...     [keras.Input((64,)), keras.layers.Dense(64)]
    ... )
    >>> report = quantize_weights(model, "int8")
    >>> report.weight_ratio < 0.3
    True
    """
    if mode not in ("int8", "int4"):
        raise ValueError(
            f"`quantize_weights` got mode={mode!r}; expected 'int8' or 'int4'."
        )
    if _qat_layers(model):
        raise ValueError(
            f"Model '{model.name}' is quantize-aware; use convert_qat."
        )
    if validation_data is not None and getattr(model, "loss", None) is None:
        raise ValueError(
            f"Model '{model.name}' is not compiled with a loss; compile it "
            "to measure the validation loss."
        )
    quantized = _copy_model(model)
    if validation_data is not None:
        quantized.compile(loss=model.loss)
    if mode == "int4":
        quantized.quantize(
            "int4",
            config=keras.quantizers.Int4QuantizationConfig(block_size=None),
        )
    else:
        quantized.quantize("int8")
    return QuantizationReport(
        mode=mode,
        model=quantized,
        weight_bytes_before=weight_bytes(model),
        weight_bytes_after=weight_bytes(quantized),
        file_bytes_before=_file_bytes(model),
        file_bytes_after=_file_bytes(quantized),
        loss_before=_loss(model, validation_data),
        loss_after=_loss(quantized, validation_data),
    )
