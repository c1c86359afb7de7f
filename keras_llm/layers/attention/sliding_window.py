"""Longformer-style sliding-window attention computed in chunks, O(T * window).

Keras' `MultiHeadAttention(sliding_window=...)` builds the band as a mask
over a dense `T x T` score matrix, so it costs as much time and memory as
full attention; TF Model Garden's Longformer layer exists only for Keras 2.
This layer cuts the sequence into chunks as long as the window and lets each
chunk attend to itself and its neighbours, so the score tensor is
`T x 2w` (causal) or `T x 3w` (two-sided): time and memory grow linearly in
`T`. Optional global tokens (Longformer's) attend to, and are attended by,
every position through a separate `g x T` computation.
"""

import keras
from keras import ops

from keras_llm.checks import check_positive_int
from keras_llm.layers.attention.base import BaseAttention
from keras_llm.layers.attention.base import block_length
from keras_llm.layers.attention.base import key_validity
from keras_llm.layers.attention.base import masked_softmax
from keras_llm.layers.attention.base import pad_axis
from keras_llm.layers.attention.base import round_up
from keras_llm.layers.attention.base import static_equal
from keras_llm.layers.attention.multi_head_attention import (
    merge_attention_masks,
)
from keras_llm.layers.attention.registry import register_attention


def _shift_chunks(x, offset, fill=0):
    """Chunk `i` of the result is chunk `i + offset` of `x` (axis 1), with
    `fill` beyond the ends; `offset` is -1 or +1."""
    edge = ops.full_like(x[:, :1], fill)
    if offset < 0:
        return ops.concatenate([edge, x[:, :-1]], axis=1)
    return ops.concatenate([x[:, 1:], edge], axis=1)


def _neighbourhood(x, causal, fill=0):
    """`(B, n, c, ...)` chunks -> `(B, n, 2c or 3c, ...)`: each chunk with its
    previous (and, when not causal, next) chunk along axis 2."""
    parts = [_shift_chunks(x, -1, fill), x]
    if not causal:
        parts.append(_shift_chunks(x, 1, fill))
    return ops.concatenate(parts, axis=2)


@keras.saving.register_keras_serializable(package="keras_llm")
@register_attention("sliding_window", "longformer")
class SlidingWindowAttention(BaseAttention):
    """Local attention over a sliding window, plus optional global tokens.

    Position `t` attends to the keys `s` with `|t - s| < window` (and
    `s <= t` with `use_causal_mask=True`), the same band as
    `keras.layers.MultiHeadAttention(sliding_window=window)`, but computed
    chunk by chunk: memory and time grow as `O(T * window)`. The first
    `num_global_tokens` positions are global (Longformer): they attend to
    every key and every query attends to them (causality still applies).
    Weights are those of `keras.layers.MultiHeadAttention`, so a model
    trained with dense attention switches to this layer unchanged.

    Args:
        num_heads: int. Number of attention heads.
        key_dim: int. Size of each head.
        window: int. Width of the band: keys closer than `window` positions
            are attended. Defaults to `256`.
        num_global_tokens: int. Number of leading global positions.
            Defaults to `0`.
        **kwargs: the arguments of `BaseAttention` (`value_dim`, `dropout`,
            `use_bias`, `output_shape`, `rotary_max_wavelength`,
            initializers, ...) and of `keras.layers.Layer`.

    Call arguments:
        query: `(B, T, dim)` tensor (self-attention only).
        padding_mask: `(B, T)` mask of valid positions.
        use_causal_mask: bool. Causal (left) window instead of two-sided.
        cache, cache_update_index: key/value cache for decoding; new tokens
            attend to the cached keys inside the window.
        training: bool.

    Returns:
        `(B, T, dim)`, or `(output, cache)` with a cache.

    Example:

    ```python
    import numpy as np
    import keras_llm

    layer = keras_llm.layers.attention.SlidingWindowAttention(
        num_heads=2, key_dim=8, window=4, num_global_tokens=1
    )
    x = np.random.rand(2, 10, 16).astype("float32")
    y = layer(x, use_causal_mask=True)  # (2, 10, 16)
    ```

    References:
        - [Beltagy et al., 2020 (Longformer)](https://arxiv.org/abs/2004.05150)
    """

    supports_cross_attention = False

    def __init__(self, num_heads, key_dim, window=256, num_global_tokens=0,
                 **kwargs):  # fmt: skip
        name = type(self).__name__
        check_positive_int(name, "window", window)
        if not isinstance(num_global_tokens, int) or num_global_tokens < 0:
            raise ValueError(
                f"`{name}` expects `num_global_tokens` to be a non-negative "
                f"int. Received: num_global_tokens={num_global_tokens!r}."
            )
        super().__init__(num_heads=num_heads, key_dim=key_dim, **kwargs)
        self.window = window
        self.num_global_tokens = num_global_tokens

    def _attend(self, query, key, value, padding_mask, causal, training):
        batch, length = ops.shape(query)[0], ops.shape(query)[1]
        heads, dim_v = self._num_heads, self._value_dim
        # A chunk as long as the window keeps every key of a chunk's queries
        # in the chunk and its neighbours; a shorter sequence is one chunk.
        chunk = block_length(self.window, length)
        padded = round_up(length, chunk)
        n = padded // chunk
        valid = key_validity(padding_mask, batch, length, padded)

        def chunks(x):
            if not static_equal(padded, length):
                x = pad_axis(x, padded - length)
            return ops.reshape(x, (batch, n, chunk) + tuple(x.shape[2:]))

        q = chunks(self._scale(query))  # (B, n, c, H, D)
        k = _neighbourhood(chunks(key), causal)  # (B, n, K, H, D)
        v = _neighbourhood(chunks(value), causal)
        k_valid = _neighbourhood(
            ops.reshape(valid, (batch, n, chunk)), causal, fill=False
        )  # (B, n, K)

        q_pos = ops.reshape(ops.arange(padded, dtype="int32"), (n, chunk))
        k_pos = _neighbourhood(q_pos[None], causal, fill=-1)[0]  # (n, K)
        distance = q_pos[:, :, None] - k_pos[:, None, :]  # (n, c, K)
        band = ops.less(ops.abs(distance), self.window)
        if causal:
            band = ops.logical_and(band, ops.greater_equal(distance, 0))
        # The shifted-in edge chunks hold position -1 (or a real position
        # of the wrong side); the validity mask already zeroes them.
        mask = ops.logical_and(band[None], k_valid[:, :, None, :])
        mask = mask[:, None]  # (B, 1, n, c, K)

        scores = ops.einsum("bnqhd,bnkhd->bhnqk", q, k)
        g = self.num_global_tokens
        if isinstance(length, int):
            g = min(g, length)
        if g:
            g_keys = key[:, :g]
            g_scores = ops.einsum("bnqhd,bkhd->bhnqk", q, g_keys)
            g_pos = ops.arange(g, dtype="int32")
            g_dist = q_pos[:, :, None] - g_pos[None, None, :]
            # Global keys already inside the band are counted there once.
            g_mask = ops.greater_equal(ops.abs(g_dist), self.window)
            if causal:
                g_mask = ops.logical_and(g_mask, ops.greater(g_dist, 0))
            g_mask = ops.logical_and(
                g_mask[None], valid[:, None, None, :g]
            )[:, None]  # fmt: skip
            probs = masked_softmax(
                ops.concatenate([scores, g_scores], axis=-1),
                ops.concatenate(
                    [
                        ops.broadcast_to(mask, ops.shape(scores)),
                        ops.broadcast_to(g_mask, ops.shape(g_scores)),
                    ],
                    axis=-1,
                ),
            )
            probs = self._dropout_probs(probs, value.dtype, training)
            local, glob = probs[..., : ops.shape(k)[2]], probs[..., -g:]
            out = ops.einsum("bhnqk,bnkhd->bnqhd", local, v)
            out = out + ops.einsum("bhnqk,bkhd->bnqhd", glob, value[:, :g])
        else:
            probs = masked_softmax(scores, mask)
            probs = self._dropout_probs(probs, value.dtype, training)
            out = ops.einsum("bhnqk,bnkhd->bnqhd", probs, v)
        out = ops.reshape(out, (batch, padded, heads, dim_v))[:, :length]
        if g:
            out = ops.concatenate(
                [self._global_rows(query, key, value, padding_mask, causal,
                                   training, g),
                 out[:, g:]],
                axis=1,
            )  # fmt: skip
        return out

    def _global_rows(self, query, key, value, padding_mask, causal, training,
                     g):  # fmt: skip
        """Dense attention of the `g` global queries over every key."""
        mask = merge_attention_masks(
            padding_mask,
            None,
            causal,
            query_length=g,
            key_length=ops.shape(key)[1],
            query_start=0,
        )
        return self._dense_attend(query[:, :g], key, value, mask, training)

    def _pattern_mask(self, query_positions, key_length):
        k_pos = ops.arange(key_length, dtype="int32")
        distance = query_positions[:, None] - k_pos[None, :]
        allowed = ops.less(ops.abs(distance), self.window)
        g = self.num_global_tokens
        if g:
            allowed = ops.logical_or(
                allowed,
                ops.logical_or(
                    ops.less(k_pos, g)[None, :],
                    ops.less(query_positions, g)[:, None],
                ),
            )
        return allowed

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "window": self.window,
                "num_global_tokens": self.num_global_tokens,
            }
        )
        return config
