"""Axial attention: one joint softmax over the keys along every axis.

Neither Keras nor keras-hub has axial attention for Keras 3: Keras'
`MultiHeadAttention(attention_axes=...)` attends over *all* positions of the
chosen axes jointly (dense over their product), and the axial layers of other
projects are separate attentions per axis whose outputs are summed or
stacked, so a query never gets one probability distribution over its keys.
This layer folds a sequence (or takes an image-shaped input) into a grid and
lets each query attend to the union of the positions that share all its
coordinates but one, with a single softmax over that union, as in the
factorised patterns of the Sparse Transformer. Scores are computed axis by
axis, so the cost is `O(N * sum(axis lengths))` instead of `O(N^2)`, and the
layer keeps the weights of `keras.layers.MultiHeadAttention` through
`BaseAttention`.
"""

import math

import keras
from keras import ops

from keras_llm.layers.attention.base import MASK_VALUE
from keras_llm.layers.attention.base import BaseAttention
from keras_llm.layers.attention.base import key_validity
from keras_llm.layers.attention.base import pad_axis
from keras_llm.layers.attention.registry import register_attention

# Einsum letters of the grid axes; "b", "h", "y" and "z" are taken by batch,
# heads, key position along the attended axis and features.
_GRID_LETTERS = "acdefgijklmnopqrstuvwx"


def _check_axial_shape(owner, axial_shape):
    """Returns `axial_shape` as a tuple of positive ints (or `None`)."""
    if axial_shape is None:
        return None
    if isinstance(axial_shape, int) and not isinstance(axial_shape, bool):
        axial_shape = (axial_shape,)
    valid = isinstance(axial_shape, (tuple, list)) and len(axial_shape) > 0
    if valid:
        valid = all(
            isinstance(n, int) and not isinstance(n, bool) and n > 0
            for n in axial_shape
        )
    if not valid:
        raise ValueError(
            f"`{owner}` expects `axial_shape` to be `None` or a non-empty "
            "tuple of positive integers (the inner axis lengths of the "
            f"folded sequence). Received: axial_shape={axial_shape!r}."
        )
    return tuple(int(n) for n in axial_shape)


@keras.saving.register_keras_serializable(package="keras_llm")
@register_attention("axial")
class AxialAttention(BaseAttention):
    """Attention along the axes of a grid with one joint softmax per query.

    A query at grid coordinates `c` attends to every position that differs
    from `c` on exactly one axis (and to itself, counted once), with a single
    softmax over that union, so each query gets a proper attention
    distribution over `sum(axis lengths) - (num_axes - 1)` keys. The scores
    are computed axis by axis: memory and time are
    `O(N * sum(axis lengths))`, never `N x N`.

    Sequence inputs `(B, T, dim)` are folded row-major into a grid
    `(rows, *axial_shape)`: `axial_shape=(64,)` gives `ceil(T / 64)` rows of
    64 positions, `(16, 16)` a 3-D grid. The sequence is padded internally to
    a multiple of `prod(axial_shape)` (padded keys are masked) and the
    padding stripped from the output. With `use_causal_mask=True` a query
    attends along every axis only to coordinates `<=` its own, so in the
    row-major order every attended key is at or before the query.

    Inputs of rank 4 or more, `(B, d1, d2, ..., dim)`, are attended along
    each spatial axis directly; `axial_shape` must then be `None`.

    The weights are those of `keras.layers.MultiHeadAttention` (see
    `BaseAttention`), so `set_weights` moves them from a dense layer.

    Args:
        num_heads: int. Number of attention heads.
        key_dim: int. Size of each query/key head.
        axial_shape: tuple of ints or `None`. Inner axis lengths of the fold
            of a sequence input. `None` folds a sequence of static length
            `T` into rows of `ceil(sqrt(T))`, and must be `None` for
            image-shaped inputs. Cached decoding follows the pattern only
            when it is set. Defaults to `None`.
        value_dim: int or `None`. Size of each value head; `None` means
            `key_dim`. Defaults to `None`.
        dropout: float. Dropout on the attention probabilities. Defaults to
            `0.0`.
        use_bias: bool. Whether the projections have biases. Defaults to
            `True`.
        output_shape: int or tuple. Width of the output; `None` keeps the
            query width. Defaults to `None`.
        rotary_max_wavelength: int or `None`. Rotary positions along the
            sequence when set (sequence inputs only). Defaults to `None`.
        **kwargs: the other arguments of `BaseAttention` and standard
            `keras.layers.Layer` arguments.

    Call arguments:
        query: `(B, T, dim)` sequence or `(B, d1, ..., dk, dim)` image.
        padding_mask: `(B, T)` (or `(B, d1, ..., dk)`) mask of valid
            positions, or `None`.
        use_causal_mask: bool. Forbid keys after the query on every axis.
        cache: `(B, 2, S_max, heads, key_dim)` key/value cache for decoding
            a sequence, or `None`.
        cache_update_index: position of the first query in the cache.
        training: bool. Enables attention dropout.

    Returns:
        A tensor shaped like `query` (last axis `output_shape` when set), or
        `(output, cache)` when a cache was given.

    Example:

    ```python
    import numpy as np
    import keras_llm
    from keras_llm.layers.attention.axial import AxialAttention

    x = np.random.rand(2, 10, 16).astype("float32")
    layer = AxialAttention(num_heads=2, key_dim=8, axial_shape=(4,))
    y = layer(x, use_causal_mask=True)  # (2, 10, 16): 3 rows of 4
    image = np.random.rand(2, 3, 4, 8).astype("float32")
    z = AxialAttention(num_heads=2, key_dim=4)(image)  # (2, 3, 4, 8)
    block = keras_llm.layers.TransformerBlock(
        num_heads=2,
        intermediate_dim=32,
        attention="axial",
        attention_kwargs={"axial_shape": (4,)},
        causal=True,
    )
    h = block(x)  # (2, 10, 16)
    ```

    References:
        - [Ho et al., 2019, Axial Attention in Multidimensional Transformers](https://arxiv.org/abs/1912.12180)
        - [Child et al., 2019, Generating Long Sequences with Sparse Transformers](https://arxiv.org/abs/1904.10509)
    """

    supports_cross_attention = False

    def __init__(self, num_heads, key_dim, axial_shape=None, **kwargs):
        super().__init__(num_heads=num_heads, key_dim=key_dim, **kwargs)
        self.axial_shape = _check_axial_shape(type(self).__name__, axial_shape)

    def build(self, query_shape, value_shape=None):
        name = type(self).__name__
        rank = len(query_shape)
        if rank >= 4:
            if self.axial_shape is not None:
                raise ValueError(
                    f"`{name}` takes `axial_shape` only for sequence inputs "
                    "(batch, length, dim); an input of rank >= 4 is attended "
                    "along its own spatial axes, so `axial_shape` must be "
                    f"None. Received: axial_shape={self.axial_shape}, input "
                    f"shape {tuple(query_shape)}."
                )
            if self.rotary_max_wavelength is not None:
                raise ValueError(
                    f"`{name}` applies rotary positions to sequence inputs "
                    "only; use rotary_max_wavelength=None for an input of "
                    f"rank >= 4. Received input shape {tuple(query_shape)}."
                )
        elif rank == 3 and self.axial_shape is None:
            self._square_fold_length(query_shape[1])
        super().build(query_shape, value_shape)

    def _square_fold_length(self, length):
        """Inner length `ceil(sqrt(T))` of the default fold of length `T`."""
        if length is None:
            raise ValueError(
                f"`{type(self).__name__}` with axial_shape=None folds the "
                "sequence into a square from its static length, which is "
                "unknown here; pass `axial_shape` (for example (64,)) for "
                "sequences of varying length."
            )
        return math.isqrt(max(int(length), 1) - 1) + 1

    # ------------------------------------------------------------ attention
    def _attend(self, query, key, value, padding_mask, causal, training):
        if len(query.shape) == 4:  # (B, T, heads, dim): a sequence, fold it.
            return self._attend_sequence(
                query, key, value, padding_mask, causal, training
            )
        valid = None
        if padding_mask is not None:
            valid = ops.cast(padding_mask, "bool")
        return self._attend_grid(query, key, value, valid, causal, training)

    def _attend_sequence(
        self, query, key, value, padding_mask, causal, training
    ):
        inner = self.axial_shape
        if inner is None:
            inner = (self._square_fold_length(query.shape[1]),)
        block = math.prod(inner)
        shape = ops.shape(query)
        batch, length = shape[0], shape[1]
        if query.shape[1] is not None:  # static length: static padding
            extra = -query.shape[1] % block
        else:
            extra = (block - length % block) % block
        unpadded = isinstance(extra, int) and extra == 0
        if unpadded:
            valid = None
            if padding_mask is not None:
                valid = ops.cast(padding_mask, "bool")
        else:
            valid = key_validity(padding_mask, batch, length, length + extra)
            query, key, value = (
                pad_axis(x, extra, axis=1) for x in (query, key, value)
            )

        def fold(x):
            return ops.reshape(
                x, (batch, -1) + inner + (self._num_heads, x.shape[-1])
            )

        if valid is not None:
            valid = ops.reshape(valid, (batch, -1) + inner)
        out = self._attend_grid(
            fold(query), fold(key), fold(value), valid, causal, training
        )
        out = ops.reshape(out, (batch, -1, self._num_heads, out.shape[-1]))
        return out if unpadded else out[:, :length]

    def _attend_grid(self, query, key, value, valid, causal, training):
        """Axial attention over `(B, g_0, ..., g_{m-1}, heads, dim)` grids.

        `valid` is a `(B, g_0, ..., g_{m-1})` bool mask of valid keys or
        `None`. Returns `(B, g_0, ..., g_{m-1}, heads, value_dim)`.
        """
        num_axes = len(query.shape) - 3
        if num_axes > len(_GRID_LETTERS):
            raise ValueError(
                f"`{type(self).__name__}` supports at most "
                f"{len(_GRID_LETTERS)} axes. Received {num_axes}."
            )
        grid = _GRID_LETTERS[:num_axes]
        query = self._scale(query)
        sizes = ops.shape(query)[1 : 1 + num_axes]
        scores = []
        for axis in range(num_axes):
            keys = grid[:axis] + "y" + grid[axis + 1 :]
            s = ops.einsum(f"b{grid}hz,b{keys}hz->b{grid}hy", query, key)
            s = ops.cast(s, "float32")
            mask = self._axis_mask(axis, num_axes, sizes[axis], causal)
            if valid is not None:
                # (B, ..., 1 at axis, ..., 1 for heads, g_axis).
                v = ops.moveaxis(valid, 1 + axis, -1)
                v = ops.expand_dims(ops.expand_dims(v, 1 + axis), -2)
                mask = v if mask is None else ops.logical_and(mask, v)
            if mask is not None:
                s = ops.where(mask, s, MASK_VALUE)
            scores.append(s)

        # One softmax over the union of the keys of every axis, computed
        # without concatenating (the row count of a fold may be dynamic).
        peak = ops.max(scores[0], axis=-1, keepdims=True)
        for s in scores[1:]:
            peak = ops.maximum(peak, ops.max(s, axis=-1, keepdims=True))
        peak = ops.stop_gradient(peak)
        exps = [ops.exp(s - peak) for s in scores]
        total = sum(ops.sum(e, axis=-1, keepdims=True) for e in exps)

        out = None
        for axis, e in enumerate(exps):
            probs = self._dropout_probs(e / total, value.dtype, training)
            keys = grid[:axis] + "y" + grid[axis + 1 :]
            o = ops.einsum(f"b{grid}hy,b{keys}hz->b{grid}hz", probs, value)
            out = o if out is None else out + o
        return out

    @staticmethod
    def _axis_mask(axis, num_axes, size, causal):
        """Structural `(1, ..., g, ..., 1, g)` mask of one axis, or `None`.

        Along the first axis a query may see every coordinate (causal:
        `<=` its own); along the others its own coordinate is excluded,
        since the first axis already holds the query's own position.
        """
        if axis == 0 and not causal:
            return None
        pos = ops.arange(size, dtype="int32")
        q_pos, k_pos = pos[:, None], pos[None, :]
        if axis == 0:
            mask = ops.greater_equal(q_pos, k_pos)
        elif causal:
            mask = ops.greater(q_pos, k_pos)
        else:
            mask = ops.not_equal(q_pos, k_pos)
        for _ in range(axis + 1):
            mask = ops.expand_dims(mask, 0)
        for _ in range(num_axes - axis):
            mask = ops.expand_dims(mask, -2)
        return mask

    # -------------------------------------------------------------- decoding
    def _pattern_mask(self, query_positions, key_length):
        """`(T, S)`: key and query differ on at most one axis of the fold."""
        if self.axial_shape is None:
            return None
        q = ops.cast(query_positions, "int32")[:, None]
        k = ops.arange(key_length, dtype="int32")[None, :]
        differing = ops.zeros_like(ops.not_equal(q, k), dtype="int32")
        for size in reversed(self.axial_shape):
            differing = differing + ops.cast(
                ops.not_equal(q % size, k % size), "int32"
            )
            q, k = q // size, k // size
        differing = differing + ops.cast(ops.not_equal(q, k), "int32")
        return ops.less_equal(differing, 1)

    def _attend_with_cache(
        self, q, k, v, cache, index, padding_mask, attention_mask, training
    ):
        if len(q.shape) != 4:
            raise ValueError(
                f"`{type(self).__name__}` decodes with a cache only for "
                f"sequence inputs (batch, length, dim). Received projected "
                f"query shape {tuple(q.shape)}."
            )
        return super()._attend_with_cache(
            q, k, v, cache, index, padding_mask, attention_mask, training
        )

    def get_config(self):
        config = super().get_config()
        config["axial_shape"] = (
            None if self.axial_shape is None else list(self.axial_shape)
        )
        return config
