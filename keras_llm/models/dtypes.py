"""Dtype policies in the configs of keras_llm's models.

A model quantized with `Model.quantize("int8")` holds sublayers whose
policies (`int8_from_float32`) differ from the model's: `serialize_dtype`
writes them as a `keras.dtype_policies.DTypePolicyMap` keyed by layer path
(the idiom of keras-hub's backbones), and the layers built from that map at
load time create their quantized variables, so a quantized model saves and
loads. Without a quantized sublayer it writes the one policy the model was
given (or `None`).
"""

import keras


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


def deserialize_dtype(config):
    """A copy of `config` with its serialized `dtype` made a policy."""
    config = dict(config)
    if isinstance(config.get("dtype"), dict):
        config["dtype"] = keras.dtype_policies.deserialize(config["dtype"])
    return config
