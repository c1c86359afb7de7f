"""BigBird-style block-sparse attention: window, global and random key blocks.

TF Model Garden's BigBird attention exists only for Keras 2 and keras-hub
has none, so this layer is written here in `keras.ops`. The sequence is cut
into blocks; each query block gathers a fixed number of key blocks (its
neighbours, the global blocks and a few random ones) and attends to them
only, so time and memory grow as `O(T * block_size * blocks_per_query)`.
The random blocks come from a stateless generator keyed by `seed`, so the
pattern is a pure function of the seed and the number of blocks: it is the
same after saving and loading, across calls and across replicas.
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


@keras.saving.register_keras_serializable(package="keras_llm")
@register_attention("block_sparse", "bigbird")
class BlockSparseAttention(BaseAttention):
    """Block-sparse attention with window, global and random blocks (BigBird).

    The sequence is split into blocks of `block_size` (padded internally).
    Query block `i` attends to key blocks `i - w .. i + w` (the window,
    `w = num_window_blocks // 2`; only `i - w .. i` when causal), to the first
    `num_global_blocks` blocks, and to `num_random_blocks` other blocks drawn
    once from `seed`. The global blocks' queries attend to every key. Each
    key block is counted once even if several rules select it. Weights are
    those of `keras.layers.MultiHeadAttention`.

    Args:
        num_heads: int. Number of attention heads.
        key_dim: int. Size of each head.
        block_size: int. Tokens per block. Defaults to `64`.
        num_window_blocks: odd int. Blocks in the sliding window, centred on
            the query block. Defaults to `3`.
        num_global_blocks: int. Leading global blocks. Defaults to `1`.
        num_random_blocks: int. Random key blocks per query block.
            Defaults to `2`.
        seed: int. Seed of the random blocks. Defaults to `0`.
        **kwargs: the arguments of `BaseAttention` and `keras.layers.Layer`.

    Call arguments:
        query: `(B, T, dim)` tensor (self-attention only).
        padding_mask: `(B, T)` mask of valid positions.
        use_causal_mask: bool. Only earlier blocks (and the causal part of
            the query's own block) are attended.
        cache, cache_update_index: key/value cache for decoding; new tokens
            attend to the cached keys under the block pattern of the cache
            length (which is the training pattern when the cache is as long
            as the training sequences).
        training: bool.

    Returns:
        `(B, T, dim)`, or `(output, cache)` with a cache.

    Example:

    ```python
    import numpy as np
    import keras_llm

    layer = keras_llm.layers.attention.BlockSparseAttention(
        num_heads=2, key_dim=8, block_size=4, num_random_blocks=1, seed=7
    )
    x = np.random.rand(2, 30, 16).astype("float32")
    y = layer(x)  # (2, 30, 16)
    ```

    References:
        - [Zaheer et al., 2020 (BigBird)](https://arxiv.org/abs/2007.14062)
    """

    supports_cross_attention = False

    def __init__(
        self,
        num_heads,
        key_dim,
        block_size=64,
        num_window_blocks=3,
        num_global_blocks=1,
        num_random_blocks=2,
        seed=0,
        **kwargs,
    ):
        name = type(self).__name__
        check_positive_int(name, "block_size", block_size)
        check_positive_int(name, "num_window_blocks", num_window_blocks)
        if num_window_blocks % 2 == 0:
            raise ValueError(
                f"`{name}` expects an odd `num_window_blocks` (the window is "
                f"centred on the query block). Received: {num_window_blocks}."
            )
        for arg, value in (
            ("num_global_blocks", num_global_blocks),
            ("num_random_blocks", num_random_blocks),
            ("seed", seed),
        ):
            if not isinstance(value, int) or value < 0:
                raise ValueError(
                    f"`{name}` expects `{arg}` to be a non-negative int. "
                    f"Received: {arg}={value!r}."
                )
        # `seed` fixes the pattern only: passed on as Keras MHA's dropout
        # seed it would give every block the same dropout masks.
        super().__init__(num_heads=num_heads, key_dim=key_dim, **kwargs)
        self.pattern_seed = seed
        self.block_size = block_size
        self.num_window_blocks = num_window_blocks
        self.num_global_blocks = num_global_blocks
        self.num_random_blocks = num_random_blocks

    def block_pattern(self, num_blocks, causal):
        """Key blocks of every query block.

        Returns:
            `(indices, selected)`: int `(n, slots)` key-block indices and a
            bool `(n, slots)` telling which slots are real (in range, not a
            repeat of an earlier slot, allowed by causality).
        """
        n = num_blocks
        half = self.num_window_blocks // 2
        rows = ops.arange(n, dtype="int32")[:, None]
        offsets = ops.arange(-half, 1 if causal else half + 1, dtype="int32")
        window = rows + offsets[None, :]
        window_ok = ops.logical_and(
            ops.greater_equal(window, 0), ops.less(window, n)
        )
        slots = [window]
        selected = [window_ok]

        def outside_window(cols):
            d = rows - cols
            return ops.greater(d, half) if causal else ops.greater(
                ops.abs(d), half
            )  # fmt: skip

        gb = self.num_global_blocks
        if gb:
            cols = ops.broadcast_to(
                ops.arange(gb, dtype="int32")[None, :], (n, gb)
            )
            ok = ops.logical_and(ops.less(cols, n), outside_window(cols))
            slots.append(cols)
            selected.append(ok)
        r = self.num_random_blocks
        if r:
            cols = ops.arange(n, dtype="int32")[None, :]
            candidate = ops.logical_and(
                outside_window(cols), ops.greater_equal(cols, gb)
            )
            draws = keras.random.uniform((n, n), seed=self.pattern_seed)
            draws = ops.where(candidate, draws, -1.0)
            # Pad so that top_k has `r` columns even with fewer blocks.
            draws = ops.concatenate([draws, -ops.ones((n, r))], axis=1)
            values, picks = ops.top_k(draws, r)
            slots.append(ops.cast(picks, "int32"))
            selected.append(ops.greater_equal(values, 0.0))
        indices = ops.concatenate(slots, axis=1)
        selected = ops.concatenate(selected, axis=1)
        return ops.clip(indices, 0, n - 1), selected

    def _attend(self, query, key, value, padding_mask, causal, training):
        batch, length = ops.shape(query)[0], ops.shape(query)[1]
        heads, dim_v = self._num_heads, self._value_dim
        b = block_length(self.block_size, length)
        padded = round_up(length, b)
        n = padded // b
        indices, selected = self.block_pattern(n, causal)
        slots = ops.shape(indices)[1]
        valid = key_validity(padding_mask, batch, length, length)

        def blocks(x):
            if not static_equal(padded, length):
                x = pad_axis(x, padded - length)
            return ops.reshape(x, (batch, n, b) + tuple(x.shape[2:]))

        def gather(x):  # (B, n, b, ...) -> (B, n, slots * b, ...)
            x = ops.take(x, indices, axis=1)  # (B, n, slots, b, ...)
            return ops.reshape(x, (batch, n, slots * b) + tuple(x.shape[4:]))

        q = blocks(self._scale(query))
        k = gather(blocks(key))
        v = gather(blocks(value))
        k_valid = gather(blocks(valid))  # (B, n, slots * b)

        offsets = ops.arange(b, dtype="int32")
        q_pos = ops.arange(n, dtype="int32")[:, None] * b + offsets[None, :]
        k_pos = ops.reshape(
            indices[:, :, None] * b + offsets[None, None, :], (n, slots * b)
        )
        allowed = ops.repeat(selected, b, axis=1)[:, None, :]  # (n, 1, K)
        if causal:
            allowed = ops.logical_and(
                allowed, ops.greater_equal(q_pos[:, :, None], k_pos[:, None])
            )
        mask = ops.logical_and(allowed[None], k_valid[:, :, None, :])

        scores = ops.einsum("bnqhd,bnkhd->bhnqk", q, k)
        probs = masked_softmax(scores, mask[:, None])
        probs = self._dropout_probs(probs, value.dtype, training)
        out = ops.einsum("bhnqk,bnkhd->bnqhd", probs, v)
        out = ops.reshape(out, (batch, padded, heads, dim_v))[:, :length]

        g = self.num_global_blocks * b
        if isinstance(length, int):
            g = min(g, length)
        if g:
            mask = merge_attention_masks(
                padding_mask,
                None,
                causal,
                query_length=g,
                key_length=length,
                query_start=0,
            )
            rows = self._dense_attend(query[:, :g], key, value, mask, training)
            out = ops.concatenate([rows, out[:, g:]], axis=1)
        return out

    def _pattern_mask(self, query_positions, key_length):
        b = self.block_size
        n = (key_length + b - 1) // b
        indices, selected = self.block_pattern(n, causal=True)
        # (n, n) block adjacency from the slots.
        adjacency = ops.any(
            ops.logical_and(
                ops.equal(
                    indices[:, :, None], ops.arange(n, dtype="int32")[None]
                ),
                selected[:, :, None],
            ),
            axis=1,
        )
        q_block = query_positions // b
        k_block = ops.arange(key_length, dtype="int32") // b
        allowed = ops.take(ops.take(adjacency, q_block, axis=0), k_block, 1)
        is_global = ops.less(q_block, self.num_global_blocks)[:, None]
        return ops.logical_or(allowed, is_global)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "block_size": self.block_size,
                "num_window_blocks": self.num_window_blocks,
                "num_global_blocks": self.num_global_blocks,
                "num_random_blocks": self.num_random_blocks,
                "seed": self.pattern_seed,
            }
        )
        return config
