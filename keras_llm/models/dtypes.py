"""What a keras_llm model's config says about sublayers its own arguments
do not rebuild: quantized dtype policies, quantize-aware layers, and
activations that carry state (fixed output ranges).

keras_llm's models build their sublayers from their own arguments, so a
change made to a nested layer after construction (Keras' `Model.quantize`,
`keras_llm.compression.quantize_aware`, `convert_qat`'s output ranges)
would be lost on a `.keras` round trip. The config records these changes
per layer path and `from_model_config` replays them on the rebuilt model
before its weights load:

- `Model.quantize("int8")` sublayers: their policies (`int8_from_float32`)
  go into a `keras.dtype_policies.DTypePolicyMap` keyed by layer path (the
  idiom of keras-hub's backbones), and the layers built from that map create
  their quantized variables.
- quantize-aware layers (`QuantizeAwareDense`, ...): the registered class
  and its quantization settings, under `"sublayers"`; the rebuilt float
  layer is made quantize-aware in place, so its quantizer variables exist
  when the weights load.
- a `Dense`/`EinsumDense` activation that is a serializable object (e.g.
  `QuantizedActivation`, the output range `convert_qat` folds in), also
  under `"sublayers"`.
- the `quantization_config` of a quantized layer (Keras rebuilds a layer
  from its policy alone and gives it default input quantizers the
  in-memory layer may not have had), also under `"sublayers"`.

A model with none of these writes the one policy it was given (or `None`)
and no `"sublayers"` entry.
"""

import importlib

import keras

_SUBLAYERS = "sublayers"
# Where the registered classes named in "sublayers" are defined (imported
# only when a config names one: models do not import compression).
_DEFINING_MODULES = ("keras_llm.compression.quantization",)


def serialize_dtype(model, dtype):
    """The `dtype` entry of `model.get_config()`.

    Args:
        model: the model (its sublayers are searched for quantized ones).
        dtype: the `dtype` argument the model was built with (or `None`).
    """
    policy_map = keras.dtype_policies.DTypePolicyMap(
        default_policy=None
        if dtype is None
        else keras.dtype_policies.get(dtype)
    )
    for layer in model._flatten_layers(include_self=False):
        if layer.quantization_mode is not None:
            policy_map[layer.path] = layer.dtype_policy
    if len(policy_map):
        return keras.dtype_policies.serialize(policy_map)
    if dtype is None:
        return None
    if isinstance(dtype, keras.dtype_policies.DTypePolicyMap):
        return keras.dtype_policies.serialize(dtype)
    return keras.dtype_policies.serialize(keras.dtype_policies.get(dtype))


def serialize_sublayers(model):
    """`{"sublayers": {path: entry}}` for the nested layers a rebuild from
    the model's arguments would not restore, or `{}` when there are none.

    Merge it into `get_config()`; `from_model_config` reads it back.
    """
    entries = {}
    for layer in model._flatten_layers(include_self=False):
        entry = {}
        if hasattr(layer, "quantize_in_place") and hasattr(
            layer, "_quantization_config"
        ):
            entry["class_name"] = keras.saving.get_registered_name(type(layer))
            entry["config"] = layer._quantization_config()
        activation = getattr(layer, "activation", None)
        if isinstance(
            layer, (keras.layers.Dense, keras.layers.EinsumDense)
        ) and hasattr(activation, "get_config"):
            entry["activation"] = keras.saving.serialize_keras_object(
                activation
            )
        quantization = (
            layer.get_config().get("quantization_config")
            if layer.quantization_mode is not None
            and hasattr(layer, "inputs_quantizer")
            else None
        )
        if quantization is not None:
            # Keras 3.15 rebuilds a quantized layer from its policy alone,
            # without this config, and then quantizes the inputs of an
            # int4 `ReversibleEmbedding`'s reverse projection that the
            # in-memory model left float (its logits moved ~1e-2).
            entry["quantization_config"] = quantization
        if entry:
            entries[layer.path] = entry
    return {_SUBLAYERS: entries} if entries else {}


def deserialize_dtype(config):
    """A copy of `config` with its serialized `dtype` made a policy."""
    config = dict(config)
    if isinstance(config.get("dtype"), dict):
        config["dtype"] = keras.dtype_policies.deserialize(config["dtype"])
    return config


def _registered_class(name):
    cls = keras.saving.get_registered_object(name)
    if cls is None:
        for module in _DEFINING_MODULES:
            importlib.import_module(module)
        cls = keras.saving.get_registered_object(name)
    if cls is None:
        raise ValueError(
            f"The model config names sublayer class '{name}', which is not "
            "registered; import the module that defines it before loading."
        )
    return cls


def from_model_config(cls, config):
    """Builds `cls` from a config written with `serialize_dtype` and
    `serialize_sublayers`: the model from its arguments, then each listed
    sublayer made quantize-aware or given its activation back."""
    config = deserialize_dtype(config)
    entries = config.pop(_SUBLAYERS, None) or {}
    model = cls(**config)
    if not entries:
        return model
    layers = {
        layer.path: layer for layer in model._flatten_layers(include_self=False)
    }
    missing = sorted(set(entries) - set(layers))
    if missing:
        raise ValueError(
            f"{cls.__name__} config lists sublayers {missing} that the "
            "rebuilt model does not have."
        )
    for path, entry in entries.items():
        layer = layers[path]
        if "class_name" in entry:
            _registered_class(entry["class_name"]).quantize_in_place(
                layer, **entry["config"]
            )
        if "quantization_config" in entry:
            config = keras.saving.deserialize_keras_object(
                entry["quantization_config"]
            )
            layer.inputs_quantizer = config.activation_quantizer
        if "activation" in entry:
            layer.activation = keras.saving.deserialize_keras_object(
                entry["activation"]
            )
    return model
