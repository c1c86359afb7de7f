"""Common base of the efficient attention layers: Keras MHA weights, our contract.

Every efficient attention layer of `keras_llm.layers.attention` subclasses
`keras.layers.MultiHeadAttention` (as keras-hub's `CachedMultiHeadAttention`
does) and keeps its `query`, `key`, `value` and `attention_output`
projections, so weights trained with dense Keras attention load unchanged
into a sliding-window, block-sparse or axial layer. What Keras' layer does
not have, and this base adds, is the call contract of
`TransformerBlock(attention=...)` (`padding_mask`, `use_causal_mask`, a
key/value cache, rotary positions) and one place where each subclass
replaces the `T x T` score matrix by its own sparse computation
(`_attend`). The base itself computes dense attention and is registered as
`"mha"`: the reference that the efficient layers are compared against and
the layer a model is pretrained with before it switches to a longer-context
attention.
"""

import keras
from keras import ops
from keras_hub.layers import RotaryEmbedding

from keras_llm.checks import check_positive_int
from keras_llm.layers.attention.multi_head_attention import (
    merge_attention_masks,
)
from keras_llm.layers.attention.multi_head_attention import update_cache
from keras_llm.layers.attention.registry import register_attention

# Added to masked scores in float32; finite, so a fully masked row (a padded
# query) gives a finite, ignored output instead of NaN.
MASK_VALUE = -1e9

# Arguments of keras.layers.MultiHeadAttention that the efficient layers
# replace with their own sparsity patterns; they are not accepted or saved.
_UNSUPPORTED_MHA_ARGS = (
    "attention_axes",
    "sliding_window",
    "flash_attention",
    "use_gate",
)


def masked_softmax(scores, mask, axis=-1):
    """Softmax in float32 over `axis` with a boolean mask (`None`: no mask)."""
    scores = ops.cast(scores, "float32")
    if mask is not None:
        scores = ops.where(mask, scores, MASK_VALUE)
    return ops.softmax(scores, axis=axis)


def pad_axis(x, length, axis=1, value=0):
    """Pads `x` at the end of `axis` by `length` (an int or scalar tensor)."""
    pads = [[0, 0] for _ in range(len(x.shape))]
    pads[axis] = [0, length]
    return ops.pad(x, pads, constant_values=value)


def round_up(length, multiple):
    """The smallest multiple of `multiple` that is `>= length`."""
    return (length + multiple - 1) // multiple * multiple


def static_equal(a, b):
    """Whether two lengths are known (Python ints) and equal."""
    return isinstance(a, int) and isinstance(b, int) and a == b


def block_length(size, length):
    """Length of the blocks (chunks) a layer cuts a sequence into: `size`,
    or the whole sequence when it is known to be shorter."""
    if isinstance(length, int):
        return max(1, min(size, length))
    return size


def key_validity(padding_mask, batch_size, length, padded_length):
    """`(B, padded_length)` bool: real, unpadded key positions."""
    if padding_mask is None:
        valid = ops.ones((batch_size, length), dtype="bool")
    else:
        valid = ops.cast(padding_mask, "bool")
    if not static_equal(padded_length, length):
        valid = pad_axis(valid, padded_length - length, axis=1, value=False)
    return valid


@keras.saving.register_keras_serializable(package="keras_llm")
@register_attention("mha")
class BaseAttention(keras.layers.MultiHeadAttention):
    """Dense attention with Keras MHA weights and the `TransformerBlock` contract.

    The base class of the efficient attention layers. Its weights are those of
    `keras.layers.MultiHeadAttention` (`query`, `key`, `value`,
    `attention_output`), so `set_weights` moves them between this layer, Keras'
    own MHA and every efficient layer of the family. Used directly (registered
    as `"mha"`) it computes dense attention through Keras' own
    `_compute_attention`.

    Subclasses override `_attend(query, key, value, padding_mask, causal,
    training)`, which receives projected `(B, T, heads, key_dim)` tensors and
    returns `(B, T, heads, value_dim)`, and optionally `_pattern_mask(...)`,
    the dense `(T, S)` form of their sparsity pattern, used when decoding
    with a cache.

    Args:
        num_heads: int. Number of attention heads.
        key_dim: int. Size of each query/key head.
        value_dim: int or `None`. Size of each value head; `None` means
            `key_dim`.
        dropout: float. Dropout on the attention probabilities.
        use_bias: bool. Whether the projections have biases.
        output_shape: int or tuple. Width of the output; `None` keeps the
            query width.
        rotary_max_wavelength: int or `None`. Rotate queries and keys with
            keras-hub's `RotaryEmbedding` when set.
        num_key_value_heads: must be `None` or `num_heads`; accepted so that
            blocks configured for grouped-query attention fail clearly.
        kernel_initializer, bias_initializer, kernel_regularizer,
        bias_regularizer, activity_regularizer, kernel_constraint,
        bias_constraint, seed: as in `keras.layers.MultiHeadAttention`.
        **kwargs: standard `keras.layers.Layer` arguments.

    Call arguments:
        query: `(B, T, dim)` tensor.
        value: `(B, S, dim)` tensor for cross-attention (dense base only), or
            `None` for self-attention.
        padding_mask: `(B, S)` mask of valid key positions.
        attention_mask: `(B, T, S)` mask of allowed pairs (dense base and
            cached decoding only).
        use_causal_mask: bool.
        cache: `(B, 2, S_max, heads, key_dim)` key/value cache or `None`.
        cache_update_index: position of the first query in the cache.
        training: bool.

    Returns:
        `(B, T, dim)`, or `(output, cache)` when a cache was given.

    Example:

    ```python
    import numpy as np
    import keras
    import keras_llm

    x = np.random.rand(2, 6, 16).astype("float32")
    mha = keras.layers.MultiHeadAttention(num_heads=2, key_dim=8)
    reference = mha(x, x, use_causal_mask=True)
    layer = keras_llm.layers.attention.BaseAttention(num_heads=2, key_dim=8)
    layer.build(x.shape)
    layer.set_weights(mha.get_weights())
    out = layer(x, use_causal_mask=True)
    np.testing.assert_allclose(out, reference, atol=1e-5)
    ```
    """

    # Whether `value` may differ from `query` (cross-attention).
    supports_cross_attention = True

    def __init__(
        self,
        num_heads,
        key_dim,
        value_dim=None,
        dropout=0.0,
        use_bias=True,
        output_shape=None,
        rotary_max_wavelength=None,
        num_key_value_heads=None,
        **kwargs,
    ):
        name = type(self).__name__
        for arg in _UNSUPPORTED_MHA_ARGS:
            if kwargs.get(arg) not in (None, False):
                raise ValueError(
                    f"`{name}` does not take `{arg}`; its attention pattern "
                    f"is its own. Received: {arg}={kwargs[arg]!r}."
                )
            kwargs.pop(arg, None)
        if "output_dim" in kwargs:  # the name `MultiHeadAttention` uses
            output_shape = output_shape or kwargs.pop("output_dim")
        check_positive_int(name, "num_heads", num_heads)
        check_positive_int(name, "key_dim", key_dim)
        check_positive_int(
            name, "rotary_max_wavelength", rotary_max_wavelength, True
        )
        if num_key_value_heads not in (None, num_heads):
            raise ValueError(
                f"`{name}` has one key/value head per query head; grouped-"
                "query attention needs attention='dense'. Received: "
                f"num_key_value_heads={num_key_value_heads}, "
                f"num_heads={num_heads}."
            )
        super().__init__(
            num_heads=num_heads,
            key_dim=key_dim,
            value_dim=value_dim,
            dropout=dropout,
            use_bias=use_bias,
            output_shape=output_shape,
            flash_attention=False,
            **kwargs,
        )
        self.rotary_max_wavelength = rotary_max_wavelength

    def build(self, query_shape, value_shape=None):
        if len(query_shape) < 3:
            raise ValueError(
                f"`{type(self).__name__}` expects a query of rank 3 "
                f"(batch, length, dim). Received shape {query_shape}."
            )
        self._self_attention = value_shape is None
        super().build(query_shape, value_shape or query_shape)
        self._build_rotary()

    def _build_rotary(self):
        if self.rotary_max_wavelength is not None:
            self.rotary_embedding = RotaryEmbedding(
                max_wavelength=self.rotary_max_wavelength,
                sequence_axis=1,
                feature_axis=-1,
                dtype=self.dtype_policy,
                name="rotary_embedding",
            )

    # ------------------------------------------------------------------ call
    def _project(self, query, value):
        """Returns projected `(B, T, heads, dim)` query, key and value."""
        source = query if value is None else value
        q = self._query_dense(query)
        k = self._key_dense(source)
        v = self._value_dense(source)
        return q, k, v

    def call(
        self,
        query,
        value=None,
        padding_mask=None,
        attention_mask=None,
        use_causal_mask=False,
        cache=None,
        cache_update_index=None,
        training=None,
    ):
        if value is not None and not self.supports_cross_attention:
            raise ValueError(
                f"`{type(self).__name__}` is a self-attention layer and does "
                "not take a `value` (cross-attention); use the dense "
                "attention for that."
            )
        q, k, v = self._project(query, value)
        start = 0 if cache_update_index is None else cache_update_index
        if self.rotary_max_wavelength is not None:
            q = self.rotary_embedding(q, start_index=start)
            k = self.rotary_embedding(k, start_index=start)

        if cache is not None:
            out, cache = self._attend_with_cache(
                q, k, v, cache, cache_update_index, padding_mask,
                attention_mask, training,
            )  # fmt: skip
        elif attention_mask is not None:
            if self._is_sparse():
                raise ValueError(
                    f"`{type(self).__name__}` computes its own sparse "
                    "pattern and takes only `padding_mask` and "
                    "`use_causal_mask`, not a full `attention_mask`."
                )
            mask = merge_attention_masks(
                padding_mask,
                attention_mask,
                use_causal_mask,
                query_length=ops.shape(q)[1],
                key_length=ops.shape(k)[1],
            )
            out = self._dense_attend(q, k, v, mask, training)
        else:
            out = self._attend(
                q, k, v, padding_mask, bool(use_causal_mask), training
            )
        out = self._output_dense(out)
        if cache is not None:
            return out, cache
        return out

    def _is_sparse(self):
        return type(self)._attend is not BaseAttention._attend

    def _dense_attend(self, q, k, v, mask, training):
        """Dense attention of Keras MHA over a `(B|1, 1, T, S)` bool mask."""
        if mask is not None:
            mask = mask[:, 0]  # Keras' _compute_attention wants (B, T, S).
        out, _ = self._compute_attention(q, k, v, mask, training)
        return out

    def _attend(self, query, key, value, padding_mask, causal, training):
        """Sparse attention of projected heads; the base is dense."""
        mask = merge_attention_masks(
            padding_mask,
            None,
            causal,
            query_length=ops.shape(query)[1],
            key_length=ops.shape(key)[1],
        )
        return self._dense_attend(query, key, value, mask, training)

    def _pattern_mask(self, query_positions, key_length):
        """The layer's sparsity pattern as a `(T, S)` bool mask, or `None`.

        Used when decoding with a cache, where the new queries attend to the
        cached keys densely under this mask (plus causality).
        """
        return None

    def _attend_with_cache(
        self, q, k, v, cache, index, padding_mask, attention_mask, training
    ):
        if index is None:
            raise ValueError(
                f"`{type(self).__name__}` needs `cache_update_index` with "
                "`cache`."
            )
        k_cache, v_cache, cache = update_cache(cache, k, v, index)
        query_length = ops.shape(q)[1]
        key_length = ops.shape(k_cache)[1]
        mask = merge_attention_masks(
            padding_mask,
            attention_mask,
            use_causal_mask=True,
            query_length=query_length,
            key_length=key_length,
            query_start=index,
        )
        positions = ops.arange(query_length, dtype="int32") + ops.cast(
            index, "int32"
        )
        out = self._cached_attend(
            q,
            ops.cast(k_cache, q.dtype),
            ops.cast(v_cache, q.dtype),
            mask,
            positions,
            training,
        )
        return out, cache

    def _cached_attend(self, q, k, v, mask, query_positions, training):
        """Attention of new queries over all cached keys while decoding:
        dense, under `mask` and the layer's `_pattern_mask`."""
        pattern = self._pattern_mask(query_positions, ops.shape(k)[1])
        if pattern is not None:
            mask = ops.logical_and(mask, pattern[None, None])
        return self._dense_attend(q, k, v, mask, training)

    def _dropout_probs(self, probs, dtype, training):
        """Attention dropout on float32 probabilities, cast for the values."""
        probs = ops.cast(probs, dtype)
        if training and self._dropout > 0:
            probs = self._dropout_layer(probs, training=True)
        return probs

    def _scale(self, query):
        return query * ops.cast(self._inverse_sqrt_key_dim, query.dtype)

    def compute_output_shape(self, query_shape, value_shape=None, **kwargs):
        if self._output_shape:
            return tuple(query_shape[:-1]) + tuple(self._output_shape)
        return tuple(query_shape)

    def compute_output_spec(self, query, value=None, cache=None, **kwargs):
        out = keras.KerasTensor(
            self.compute_output_shape(query.shape), dtype=self.compute_dtype
        )
        if cache is not None:
            return out, keras.KerasTensor(cache.shape, dtype=cache.dtype)
        return out

    def get_config(self):
        config = super().get_config()
        for arg in _UNSUPPORTED_MHA_ARGS:
            config.pop(arg, None)
        config["rotary_max_wavelength"] = self.rotary_max_wavelength
        return config
