"""Name registry for attention layers usable as ``TransformerBlock(attention=...)``.

A registered attention layer follows one call contract, so the block can host
any of them:

``call(query, value=None, padding_mask=None, attention_mask=None,
use_causal_mask=False, cache=None, cache_update_index=None, training=None)``

returns the attended output, shaped like ``query``, or ``(output, cache)`` when
a ``cache`` is passed. Its constructor takes ``num_heads`` and ``key_dim``
(plus its own keyword arguments).
"""

import copy

import keras

_ATTENTION_REGISTRY = {}


def register_attention(*names):
    """Class decorator that makes an attention layer selectable by name.

    Args:
        *names: one or more strings under which the class is registered.

    Example:

    ```python
    import keras
    import numpy as np
    from keras_llm.layers import TransformerBlock
    from keras_llm.layers.attention import MultiHeadAttention
    from keras_llm.layers.attention import register_attention

    @register_attention("half_query")
    @keras.saving.register_keras_serializable(package="my_project")
    class HalfQueryAttention(MultiHeadAttention):
        def call(self, query, *args, **kwargs):
            return super().call(query * 0.5, *args, **kwargs)

    block = TransformerBlock(
        num_heads=2, intermediate_dim=32, attention="half_query"
    )
    y = block(np.zeros((1, 4, 16), "float32"))
    ```
    """

    def decorator(cls):
        for name in names:
            _ATTENTION_REGISTRY[name] = cls
        return cls

    return decorator


def registered_attention_names():
    """The names accepted by `get_attention`, sorted."""
    return sorted(_ATTENTION_REGISTRY)


def get_attention(identifier, **kwargs):
    """Returns an attention layer from a name, a config dict or an instance.

    Args:
        identifier: a registered name (`"dense"`), a serialized layer config
            (a dict from `keras.saving.serialize_keras_object`) or a layer
            instance, which is returned unchanged.
        **kwargs: constructor arguments used when `identifier` is a name
            (typically `num_heads`, `key_dim`, `dropout`, `dtype`, `name`).

    Returns:
        A `keras.layers.Layer`.
    """
    if isinstance(identifier, keras.layers.Layer):
        return identifier
    if isinstance(identifier, dict):
        return keras.saving.deserialize_keras_object(identifier)
    if isinstance(identifier, str):
        if identifier not in _ATTENTION_REGISTRY:
            raise ValueError(
                f"Unknown attention {identifier!r}. Expected one of "
                f"{registered_attention_names()}, a layer instance or a "
                "serialized layer config."
            )
        return _ATTENTION_REGISTRY[identifier](**kwargs)
    raise TypeError(
        "`attention` must be a registered name, a layer config dict or a "
        f"keras.layers.Layer instance. Received: {identifier!r} of type "
        f"{type(identifier).__name__}."
    )


def make_attention(identifier, options=None, **defaults):
    """Builds the attention layer of a block.

    Args:
        identifier: a registered name or a serialized layer config.
        options: dict of the attention's own arguments (for example
            `{"window": 256}`); they win over `defaults` and over the values
            in a config.
        **defaults: the block's arguments for a named attention (`num_heads`,
            `key_dim`, `dtype`, `name`, ...). For a config only `name` and
            `dtype` are applied, so each block names and types its own copy.

    Returns:
        An unbuilt attention layer.
    """
    options = dict(options or {})
    if isinstance(identifier, dict):
        config = copy.deepcopy(identifier)
        for key in ("name", "dtype"):
            if key in defaults:
                config["config"][key] = keras.saving.serialize_keras_object(
                    defaults[key]
                )
        config["config"].update(options)
        return get_attention(config)
    return get_attention(identifier, **{**defaults, **options})
