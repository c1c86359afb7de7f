"""Dense multi-head attention on `keras.ops.dot_product_attention`.

Keras' own `MultiHeadAttention` has no key/value cache for incremental
decoding, no rotary positions and no grouped key/value heads, and keras-hub's
`CachedMultiHeadAttention` projects query, key and value with three separate
einsums. This layer adds what a decoder needs on top of the fused kernel that
Keras already provides (`keras.ops.dot_product_attention`): one fused QKV
projection for self-attention, an optional rotary embedding from keras-hub, a
key/value cache, and Keras-style masks. It is the default attention of
`keras_llm.layers.TransformerBlock` and the reference that efficient attention
layers are compared against.
"""

import keras
from keras import ops
from keras_hub.layers import RotaryEmbedding

from keras_llm.checks import check_positive_int
from keras_llm.checks import check_rate
from keras_llm.layers.attention.registry import register_attention


def clone_initializer(initializer):
    """A fresh initializer with the same config, so sublayers do not share one."""
    return keras.initializers.get(keras.initializers.serialize(initializer))


def merge_attention_masks(
    padding_mask=None,
    attention_mask=None,
    use_causal_mask=False,
    query_length=None,
    key_length=None,
    query_start=None,
):
    """Combines Keras-convention masks into one boolean `(B|1, 1, T, S)` mask.

    Args:
        padding_mask: `(B, S)` mask of valid key positions, or `None`.
        attention_mask: `(B, T, S)` mask of allowed query-key pairs, or `None`.
        use_causal_mask: whether to forbid keys after each query.
        query_length: `T`, needed with `use_causal_mask`.
        key_length: `S`, needed with `use_causal_mask`.
        query_start: position of the first query among the keys (used when
            decoding with a cache). `None` means `S - T`.

    Returns:
        A boolean tensor broadcastable to `(B, heads, T, S)`, or `None` when no
        mask applies.
    """
    mask = None
    if padding_mask is not None:
        mask = ops.cast(padding_mask, "bool")[:, None, None, :]
    if attention_mask is not None:
        m = ops.cast(attention_mask, "bool")[:, None, :, :]
        mask = m if mask is None else ops.logical_and(mask, m)
    if use_causal_mask:
        if query_start is None:
            query_start = key_length - query_length
        q_pos = ops.arange(query_length, dtype="int32") + ops.cast(
            query_start, "int32"
        )
        k_pos = ops.arange(key_length, dtype="int32")
        causal = ops.greater_equal(q_pos[:, None], k_pos[None, :])
        causal = causal[None, None, :, :]
        mask = causal if mask is None else ops.logical_and(mask, causal)
    return mask


def update_cache(cache, key, value, index):
    """Writes new keys and values into a `(B, 2, S, heads, dim)` cache.

    Returns:
        `(keys, values, cache)`: the whole cached keys and values (in the
        cache dtype) and the updated cache.
    """
    start = [0, index, 0, 0]
    keys = ops.slice_update(cache[:, 0], start, ops.cast(key, cache.dtype))
    values = ops.slice_update(cache[:, 1], start, ops.cast(value, cache.dtype))
    return keys, values, ops.stack([keys, values], axis=1)


@keras.saving.register_keras_serializable(package="keras_llm")
@register_attention("dense", "multi_head")
class MultiHeadAttention(keras.layers.Layer):
    """Dense multi-head attention with a fused kernel, cache and rotary option.

    Self-attention (no `value`) uses one fused query/key/value projection;
    cross-attention (`value` given) projects the query and the key/value pair
    separately. Scores go through `keras.ops.dot_product_attention`, which
    computes the softmax in float32 under mixed precision.

    Args:
        num_heads: int. Number of query heads.
        key_dim: int. Size of each head.
        num_key_value_heads: int or `None`. Number of key/value heads for
            grouped-query attention; must divide `num_heads`. `None` means
            `num_heads`. Defaults to `None`.
        dropout: float. Dropout on the attention probabilities (training only).
            Defaults to `0.0`.
        use_bias: bool. Whether the projections have biases. Defaults to
            `True`.
        output_dim: int or `None`. Width of the output; `None` keeps the width
            of the query. Defaults to `None`.
        rotary_max_wavelength: int or `None`. If set, queries and keys are
            rotated by keras-hub's `RotaryEmbedding` with this wavelength.
            Defaults to `None`.
        kernel_initializer: initializer of the projection kernels. Defaults to
            `"glorot_uniform"`.
        bias_initializer: initializer of the projection biases. Defaults to
            `"zeros"`.
        **kwargs: standard `keras.layers.Layer` arguments.

    Call arguments:
        query: `(B, T, dim)` tensor.
        value: `(B, S, dim_v)` tensor for cross-attention, or `None` for
            self-attention.
        padding_mask: `(B, S)` mask of valid key positions.
        attention_mask: `(B, T, S)` mask of allowed query-key pairs.
        use_causal_mask: bool. Forbid attending to later positions.
        cache: `(B, 2, S_max, num_key_value_heads, key_dim)` key/value cache
            for incremental self-attention decoding, or `None`.
        cache_update_index: int or scalar tensor. Position of the first query
            token in the cache.
        training: bool. Enables attention dropout.

    Returns:
        `(B, T, output_dim)` tensor, or `(output, cache)` if a cache was given.

    Example:

    ```python
    import numpy as np
    import keras_llm

    layer = keras_llm.layers.attention.MultiHeadAttention(num_heads=2, key_dim=8)
    x = np.random.rand(2, 5, 16).astype("float32")
    y = layer(x, use_causal_mask=True)  # (2, 5, 16)
    ```

    References:
        - [Vaswani et al., 2017](https://arxiv.org/abs/1706.03762)
        - [Su et al., 2021 (RoFormer)](https://arxiv.org/abs/2104.09864)
    """

    def __init__(
        self,
        num_heads,
        key_dim,
        num_key_value_heads=None,
        dropout=0.0,
        use_bias=True,
        output_dim=None,
        rotary_max_wavelength=None,
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        **kwargs,
    ):
        super().__init__(**kwargs)
        name = type(self).__name__
        check_positive_int(name, "num_heads", num_heads)
        check_positive_int(name, "key_dim", key_dim)
        check_positive_int(
            name, "num_key_value_heads", num_key_value_heads, allow_none=True
        )
        check_positive_int(name, "output_dim", output_dim, allow_none=True)
        if num_key_value_heads is not None and num_heads % num_key_value_heads:
            raise ValueError(
                f"`{name}` expects `num_heads` to be divisible by "
                f"`num_key_value_heads`. Received: num_heads={num_heads}, "
                f"num_key_value_heads={num_key_value_heads}."
            )
        check_rate(name, "dropout", dropout)
        self.num_heads = num_heads
        self.key_dim = key_dim
        self.num_key_value_heads = num_key_value_heads
        self.dropout = dropout
        self.use_bias = use_bias
        self.output_dim = output_dim
        self.rotary_max_wavelength = rotary_max_wavelength
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self._kv_heads = num_key_value_heads or num_heads

    def _dense(self, units, name):
        return keras.layers.Dense(
            units,
            use_bias=self.use_bias,
            kernel_initializer=clone_initializer(self.kernel_initializer),
            bias_initializer=clone_initializer(self.bias_initializer),
            dtype=self.dtype_policy,
            name=name,
        )

    def build(self, query_shape, value_shape=None):
        if len(query_shape) != 3:
            raise ValueError(
                f"`{type(self).__name__}` expects a query of rank 3 "
                f"(batch, length, dim). Received shape {query_shape}."
            )
        width = query_shape[-1]
        q_units = self.num_heads * self.key_dim
        kv_units = self._kv_heads * self.key_dim
        self._self_attention = value_shape is None
        if self._self_attention:
            self.qkv_dense = self._dense(q_units + 2 * kv_units, "qkv")
            self.qkv_dense.build(query_shape)
        else:
            self.query_dense = self._dense(q_units, "query")
            self.query_dense.build(query_shape)
            self.key_value_dense = self._dense(2 * kv_units, "key_value")
            self.key_value_dense.build(value_shape)
        self.output_dense = self._dense(self.output_dim or width, "output")
        self.output_dense.build(tuple(query_shape[:-1]) + (q_units,))
        if self.rotary_max_wavelength is not None:
            self.rotary_embedding = RotaryEmbedding(
                max_wavelength=self.rotary_max_wavelength,
                sequence_axis=1,
                feature_axis=-1,
                dtype=self.dtype_policy,
                name="rotary_embedding",
            )
        self.dropout_layer = keras.layers.Dropout(
            self.dropout, dtype=self.dtype_policy, name="attention_dropout"
        )
        self.built = True

    def _split_heads(self, x, heads):
        shape = ops.shape(x)
        return ops.reshape(x, (shape[0], shape[1], heads, self.key_dim))

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
        q_units = self.num_heads * self.key_dim
        kv_units = self._kv_heads * self.key_dim
        if self._self_attention:
            if value is not None:
                raise ValueError(
                    f"`{self.name}` was built for self-attention and cannot "
                    "take a `value` argument."
                )
            # One reshape to heads, then slices along the head axis: cheaper
            # (forward and backward) than slicing features then reshaping.
            qkv = self.qkv_dense(query)
            shape = ops.shape(qkv)
            qkv = ops.reshape(
                qkv,
                (
                    shape[0],
                    shape[1],
                    self.num_heads + 2 * self._kv_heads,
                    self.key_dim,
                ),
            )
            h, kv = self.num_heads, self._kv_heads
            q, k, v = qkv[:, :, :h], qkv[:, :, h : h + kv], qkv[:, :, h + kv :]
        else:
            if value is None:
                raise ValueError(
                    f"`{self.name}` was built for cross-attention and needs "
                    "a `value` argument."
                )
            q = self._split_heads(self.query_dense(query), self.num_heads)
            kv = self.key_value_dense(value)
            k = self._split_heads(kv[..., :kv_units], self._kv_heads)
            v = self._split_heads(kv[..., kv_units:], self._kv_heads)

        start = 0 if cache_update_index is None else cache_update_index
        if self.rotary_max_wavelength is not None:
            q = self.rotary_embedding(q, start_index=start)
            k = self.rotary_embedding(k, start_index=start)

        query_length = ops.shape(q)[1]
        if cache is not None:
            if cache_update_index is None:
                raise ValueError(
                    f"`{self.name}` needs `cache_update_index` with `cache`."
                )
            k, v, cache = update_cache(cache, k, v, start)
            # Keys beyond the cached positions are zeros; causality hides them.
            mask = merge_attention_masks(
                padding_mask,
                attention_mask,
                use_causal_mask=True,
                query_length=query_length,
                key_length=ops.shape(k)[1],
                query_start=start,
            )
            is_causal = False
        else:
            mask = merge_attention_masks(padding_mask, attention_mask)
            is_causal = bool(use_causal_mask)

        if self._kv_heads != self.num_heads:
            # Keras' TF dot_product_attention repeats key/value heads only
            # when there are more than one, and then fails for multi-query
            # attention; repeat them here on every backend.
            groups = self.num_heads // self._kv_heads
            k = ops.repeat(k, groups, axis=2)
            v = ops.repeat(v, groups, axis=2)
        if training and self.dropout > 0:
            out = self._attention_with_dropout(q, k, v, mask, is_causal)
        else:
            out = ops.dot_product_attention(
                q, k, v, mask=mask, is_causal=is_causal
            )
        shape = ops.shape(out)
        out = ops.reshape(out, (shape[0], shape[1], q_units))
        out = self.output_dense(out)
        if cache is not None:
            return out, cache
        return out

    def _attention_with_dropout(self, q, k, v, mask, is_causal):
        scale = 1.0 / float(self.key_dim) ** 0.5
        scores = ops.einsum("btnh,bsnh->bnts", q, k)
        scores = ops.cast(scores, "float32") * scale
        if is_causal:
            t, s = ops.shape(q)[1], ops.shape(k)[1]
            causal = merge_attention_masks(
                use_causal_mask=True, query_length=t, key_length=s
            )
            mask = causal if mask is None else ops.logical_and(mask, causal)
        if mask is not None:
            scores = ops.where(mask, scores, -1e9)
        probs = ops.softmax(scores, axis=-1)
        probs = self.dropout_layer(ops.cast(probs, v.dtype), training=True)
        return ops.einsum("bnts,bsnh->btnh", probs, v)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_heads": self.num_heads,
                "key_dim": self.key_dim,
                "num_key_value_heads": self.num_key_value_heads,
                "dropout": self.dropout,
                "use_bias": self.use_bias,
                "output_dim": self.output_dim,
                "rotary_max_wavelength": self.rotary_max_wavelength,
                "kernel_initializer": keras.initializers.serialize(
                    self.kernel_initializer
                ),
                "bias_initializer": keras.initializers.serialize(
                    self.bias_initializer
                ),
            }
        )
        return config
