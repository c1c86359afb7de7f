"""Reformer's LSH attention (shared query/key, hashed buckets), O(T * chunk).

Neither Keras nor keras-hub offers locality-sensitive-hashing attention for
Keras 3; the Reformer exists in Trax (JAX) and in PyTorch/TF 2 ports of
Hugging Face models, none of which plugs into a Keras layer stack or its
`.keras` format. So it is written here on `keras.ops`: queries and keys are
tied (keys are the L2-normalised queries), every key is hashed into one of
`num_buckets` buckets by random rotations (angular LSH) in `num_hashes`
independent rounds, each round sorts the sequence by bucket and attends
within chunks of `chunk_length` sorted positions (and their neighbours), and
the rounds are combined with weights from their log-sum-exp. Nothing of size
`T x T` is ever formed: time and memory grow as
`O(T * chunk_length * num_hashes)`.
"""

import keras
import numpy as np
from keras import ops
from keras.src.layers.attention.multi_head_attention import _build_proj_equation
from keras.src.layers.attention.multi_head_attention import _get_output_shape

from keras_llm.checks import check_positive_int
from keras_llm.layers.attention.base import MASK_VALUE
from keras_llm.layers.attention.base import BaseAttention
from keras_llm.layers.attention.base import block_length
from keras_llm.layers.attention.base import key_validity
from keras_llm.layers.attention.base import masked_softmax
from keras_llm.layers.attention.base import pad_axis
from keras_llm.layers.attention.base import round_up
from keras_llm.layers.attention.base import static_equal
from keras_llm.layers.attention.registry import register_attention

# Score of a query against its own key (Reformer's value): finite and far
# below any real score, so a position attends to itself only when no other
# key is allowed (e.g. the first position of a causal sequence), yet far
# above MASK_VALUE, so it still wins over masked keys.
SELF_ATTENTION_VALUE = -1e5


def _l2_normalize(x, epsilon=1e-12):
    """Unit vectors along the last axis, computed in float32."""
    x32 = ops.cast(x, "float32")
    norm = ops.rsqrt(ops.sum(ops.square(x32), axis=-1, keepdims=True) + epsilon)
    return ops.cast(x32 * norm, x.dtype)


def _shift_chunks(x, offset, fill):
    """Chunk `i` of the result is chunk `i + offset` of `x` along axis 3
    (`(B, heads, rounds, chunks, ...)`), with `fill` beyond the ends; no
    wrap-around, so no key is seen twice by one chunk."""
    edge = ops.full_like(x[:, :, :, :1], fill)
    if offset < 0:
        return ops.concatenate([edge, x[:, :, :, :-1]], axis=3)
    return ops.concatenate([x[:, :, :, 1:], edge], axis=3)


def _look_around(x, causal, fill):
    """`(B, H, R, n, c, ...)` -> `(B, H, R, n, 2c or 3c, ...)`: each chunk
    with the previous one (and, when not causal, the next one) on axis 4."""
    parts = [_shift_chunks(x, -1, fill), x]
    if not causal:
        parts.append(_shift_chunks(x, 1, fill))
    return ops.concatenate(parts, axis=4)


@keras.saving.register_keras_serializable(package="keras_llm")
@register_attention("lsh")
class LSHAttention(BaseAttention):
    """Reformer's locality-sensitive-hashing attention with shared query/key.

    Keys are the L2-normalised queries of each head (shared QK), so a query
    is most similar to the keys pointing the same way. Scores are `q . k`
    with unit-length keys and no further `1 / sqrt(key_dim)` factor (as in
    the Reformer implementations): scaled as well, the scores of a newly
    initialised layer are so flat that a character-level model trained
    3-4% worse than with dense attention at the same steps. Each key is hashed by
    random rotations `R` of shape `(key_dim, num_hashes, num_buckets // 2)`:
    in round `r` its bucket is `argmax(concat([k R_r, -k R_r]))`. Each round
    sorts the positions by `(bucket, position)`, cuts the sorted sequence
    into chunks of `chunk_length`, and lets each chunk attend to itself and
    the previous chunk (and the next one when not causal), keeping only
    keys of the query's own bucket. A query attends to its own key only when
    nothing else is allowed (score `-1e5`, as in the Reformer). The softmax
    runs in float32; the rounds are combined with weights
    `softmax_r(logsumexp_r)`, which equals exact attention over the union of
    the keys each round found (a key found in several rounds counts once per
    round). Padding up to a multiple of `chunk_length` is internal; padded
    and `padding_mask`-ed positions sort into an extra bucket after the
    real ones, so they take no chunk space from real tokens. Outputs at
    positions masked by `padding_mask` are finite but unspecified.

    Weights: there is no `key` projection. From a dense
    `keras.layers.MultiHeadAttention`, `query` becomes the shared query/key
    projection, `value` and `attention_output` carry over unchanged and
    `key` is dropped (see the example). The random rotations are a
    non-trainable weight (`hash_rotations`) drawn with NumPy from `seed` in
    `build`, so a saved and reloaded layer hashes identically, on any
    backend. With `num_buckets=1` and `chunk_length >= T` the layer computes
    exact dense shared-QK attention.

    Cached decoding (`cache=...`) does not hash: the new tokens attend to
    every cached key under the causal mask (`_pattern_mask` is `None`),
    with the same `-1e5` self score, i.e. exact dense shared-QK attention,
    the quantity the hashed pass approximates.

    Args:
        num_heads: int. Number of attention heads.
        key_dim: int. Size of each query/key head.
        num_buckets: int. Hash buckets per round: even and `>= 2`, or `1`
            (a single bucket: no hashing). Defaults to `8`.
        num_hashes: int. Independent hashing rounds. Defaults to `2`.
        chunk_length: int. Sorted positions per chunk; each query sees at
            most `2 * chunk_length` (causal) or `3 * chunk_length` keys per
            round. Defaults to `64`.
        seed: int >= 0. Seed of the random rotations (saved in the config).
            It does not seed the attention dropout, which draws its own
            seed as in `keras.layers.MultiHeadAttention(seed=None)`.
            Defaults to `0`.
        **kwargs: the arguments of `BaseAttention` (`value_dim`, `dropout`,
            `use_bias`, `output_shape`, `rotary_max_wavelength`,
            initializers, ...) and of `keras.layers.Layer`.

    Call arguments:
        query: `(B, T, dim)` tensor (self-attention only).
        padding_mask: `(B, T)` mask of valid positions.
        use_causal_mask: bool. Forbid keys after each query (by original
            position).
        cache, cache_update_index: key/value cache for decoding (dense, see
            above). The cache holds the normalised keys.
        training: bool. Applies dropout to the attention probabilities.

    Returns:
        `(B, T, dim)`, or `(output, cache)` with a cache.

    Example:

    ```python
    import numpy as np
    import keras
    import keras_llm

    x = np.random.rand(2, 12, 16).astype("float32")
    layer = keras_llm.layers.attention.LSHAttention(
        num_heads=2, key_dim=8, num_buckets=4, num_hashes=2, chunk_length=4
    )
    y = layer(x, use_causal_mask=True)  # (2, 12, 16)

    # Weights of a dense Keras attention: `key` is dropped.
    mha = keras.layers.MultiHeadAttention(num_heads=2, key_dim=8)
    mha(x, x)
    layer.query_dense.set_weights(mha.query_dense.get_weights())
    layer.value_dense.set_weights(mha.value_dense.get_weights())
    layer.output_dense.set_weights(mha.output_dense.get_weights())
    y = layer(x, use_causal_mask=True)
    ```

    References:
        - [Kitaev et al., 2020, Reformer: The Efficient Transformer](https://arxiv.org/abs/2001.04451)
        - [Andoni et al., 2015, Practical and Optimal LSH for Angular Distance](https://arxiv.org/abs/1509.02897)
    """

    supports_cross_attention = False

    def __init__(
        self,
        num_heads,
        key_dim,
        num_buckets=8,
        num_hashes=2,
        chunk_length=64,
        seed=0,
        **kwargs,
    ):
        name = type(self).__name__
        check_positive_int(name, "num_buckets", num_buckets)
        if num_buckets != 1 and num_buckets % 2:
            raise ValueError(
                f"`{name}` expects `num_buckets` to be even (rotations "
                "give buckets in +/- pairs) or 1 (no hashing). Received: "
                f"num_buckets={num_buckets}."
            )
        check_positive_int(name, "num_hashes", num_hashes)
        check_positive_int(name, "chunk_length", chunk_length)
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(
                f"`{name}` expects `seed` to be a non-negative integer. "
                f"Received: seed={seed!r}."
            )
        super().__init__(num_heads=num_heads, key_dim=key_dim, **kwargs)
        self.num_buckets = num_buckets
        self.num_hashes = num_hashes
        self.chunk_length = chunk_length
        self.hash_seed = seed

    # ----------------------------------------------------------------- build
    def build(self, query_shape, value_shape=None):
        if len(query_shape) < 3:
            raise ValueError(
                f"`{type(self).__name__}` expects a query of rank 3 "
                f"(batch, length, dim). Received shape {query_shape}."
            )
        self._self_attention = True
        rank = len(query_shape)
        equation, bias_axes, output_rank = _build_proj_equation(
            rank - 1, bound_dims=1, output_dims=2
        )

        def projection(name, head_dim):
            dense = keras.layers.EinsumDense(
                equation,
                output_shape=_get_output_shape(
                    output_rank - 1, [self._num_heads, head_dim]
                ),
                bias_axes=bias_axes if self._use_bias else None,
                name=name,
                **self._get_common_kwargs_for_sublayer(),
            )
            dense.build(query_shape)
            return dense

        # Shared QK: no key projection, so no unused trainable weights.
        self._query_dense = projection("query", self._key_dim)
        self._key_dense = None
        self._value_dense = projection("value", self._value_dim)
        self._build_attention(output_rank)
        self._output_dense = self._make_output_dense(
            query_shape,
            self._get_common_kwargs_for_sublayer(),
            "attention_output",
        )
        output_input_shape = list(
            self._query_dense.compute_output_shape(query_shape)
        )
        output_input_shape[-1] = self._value_dim
        self._output_dense.build(tuple(output_input_shape))
        if self.num_buckets > 1:
            self.hash_rotations = self.add_weight(
                name="hash_rotations",
                shape=(self._key_dim, self.num_hashes, self.num_buckets // 2),
                initializer=self._rotations_initializer,
                trainable=False,
                dtype="float32",
                autocast=False,
            )
        self._build_rotary()

    def _rotations_initializer(self, shape, dtype=None):
        rng = np.random.default_rng(self.hash_seed)
        rotations = rng.standard_normal(tuple(shape)).astype("float32")
        return ops.convert_to_tensor(rotations, dtype=dtype or "float32")

    # ------------------------------------------------------------------ call
    def _project(self, query, value):
        """Projected query, shared key (the normalised query) and value."""
        q = self._query_dense(query)
        return q, _l2_normalize(q), self._value_dense(query)

    def _hash(self, keys):
        """`(B, H, T, key_dim)` normalised keys -> `(B, H, R, T)` int32
        bucket ids in `[0, num_buckets)`."""
        if self.num_buckets == 1:
            zeros = ops.zeros_like(ops.cast(keys[:, :, None, :, 0], "int32"))
            return ops.repeat(zeros, self.num_hashes, axis=2)
        rotated = ops.einsum(
            "bhtd,drk->bhrtk",
            ops.cast(keys, "float32"),
            ops.cast(self.hash_rotations, "float32"),
        )
        rotated = ops.concatenate([rotated, -rotated], axis=-1)
        return ops.cast(ops.argmax(rotated, axis=-1), "int32")

    def hash_buckets(self, inputs):
        """Bucket ids of each position, head and round (for inspection).

        Args:
            inputs: `(B, T, dim)` tensor, as passed to the layer.

        Returns:
            `(B, num_heads, num_hashes, T)` int32 tensor (rotary positions
            applied when the layer uses them).
        """
        if not self.built:
            self.build(ops.shape(inputs))
        _, keys, _ = self._project(inputs, None)
        if self.rotary_max_wavelength is not None:
            keys = self.rotary_embedding(keys)
        return self._hash(ops.transpose(keys, (0, 2, 1, 3)))

    def _attend(self, query, key, value, padding_mask, causal, training):
        batch, length = ops.shape(query)[0], ops.shape(query)[1]
        heads, rounds = self._num_heads, self.num_hashes
        chunk = block_length(self.chunk_length, length)
        padded = round_up(length, chunk)
        n = padded // chunk
        valid = key_validity(padding_mask, batch, length, padded)

        def to_heads(x):  # (B, T, H, D) -> (B, H, Tp, D)
            if not static_equal(padded, length):
                x = pad_axis(x, padded - length)
            return ops.transpose(x, (0, 2, 1, 3))

        q = to_heads(query)  # unit keys: no 1/sqrt(key_dim) (see above)
        k = to_heads(key)
        v = to_heads(value)

        # Hash; padded and padding-masked keys go to an extra last bucket,
        # which sorts after every real one and matches no real query.
        buckets = self._hash(k)  # (B, H, R, Tp)
        buckets = ops.where(valid[:, None, None, :], buckets, self.num_buckets)
        positions = ops.arange(padded, dtype="int32")
        sort_key = buckets * ops.cast(padded, "int32") + positions
        order = ops.cast(ops.argsort(sort_key, axis=-1), "int32")
        undo = ops.cast(ops.argsort(order, axis=-1), "int32")

        def sort_and_chunk(x):  # (B, H, Tp, D) -> (B, H, R, n, c, D)
            x = ops.take_along_axis(x[:, :, None], order[..., None], axis=3)
            return ops.reshape(
                x, (batch, heads, rounds, n, chunk) + tuple(x.shape[4:])
            )

        def chunked(x):  # (B, H, R, Tp) -> (B, H, R, n, c)
            return ops.reshape(x, (batch, heads, rounds, n, chunk))

        sq = sort_and_chunk(q)
        sk = _look_around(sort_and_chunk(k), causal, 0)
        sv = _look_around(sort_and_chunk(v), causal, 0)
        q_bucket = chunked(ops.take_along_axis(buckets, order, axis=-1))
        k_bucket = _look_around(q_bucket, causal, -1)
        q_pos = chunked(order)
        k_pos = _look_around(q_pos, causal, -1)

        q_bucket, k_bucket = q_bucket[..., :, None], k_bucket[..., None, :]
        q_pos, k_pos = q_pos[..., :, None], k_pos[..., None, :]
        allowed = ops.logical_and(
            ops.equal(q_bucket, k_bucket),
            ops.less(k_bucket, self.num_buckets),
        )
        if causal:
            allowed = ops.logical_and(allowed, ops.greater_equal(q_pos, k_pos))

        scores = ops.einsum("bhrnqd,bhrnkd->bhrnqk", sq, sk)
        scores = ops.cast(scores, "float32")
        scores = ops.where(
            ops.equal(q_pos, k_pos), SELF_ATTENTION_VALUE, scores
        )
        scores = ops.where(allowed, scores, MASK_VALUE)
        lse = ops.logsumexp(scores, axis=-1, keepdims=True)
        probs = ops.exp(scores - lse)
        probs = self._dropout_probs(probs, value.dtype, training)
        out = ops.einsum("bhrnqk,bhrnkd->bhrnqd", probs, sv)

        # Back to the original order, then combine the rounds.
        out = ops.reshape(out, (batch, heads, rounds, padded, self._value_dim))
        lse = ops.reshape(lse, (batch, heads, rounds, padded))
        out = ops.take_along_axis(out, undo[..., None], axis=3)
        if rounds == 1:
            out = out[:, :, 0]
        else:
            lse = ops.take_along_axis(lse, undo, axis=3)
            weights = ops.softmax(lse, axis=2)  # float32, over rounds
            out = ops.sum(out * ops.cast(weights, out.dtype)[..., None], axis=2)
        out = ops.transpose(out, (0, 2, 1, 3))  # (B, Tp, H, Dv)
        return out[:, :length]

    def _cached_attend(self, q, k, v, mask, query_positions, training):
        """Dense causal shared-QK attention over the cache, with the same
        self-attention penalty as the hashed pass."""
        k_pos = ops.arange(ops.shape(k)[1], dtype="int32")
        scores = ops.cast(ops.einsum("bqhd,bkhd->bhqk", q, k), "float32")
        scores = ops.where(
            ops.equal(query_positions[:, None], k_pos[None, :])[None, None],
            SELF_ATTENTION_VALUE,
            scores,
        )
        probs = masked_softmax(scores, mask)
        probs = self._dropout_probs(probs, v.dtype, training)
        return ops.einsum("bhqk,bkhd->bqhd", probs, v)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_buckets": self.num_buckets,
                "num_hashes": self.num_hashes,
                "chunk_length": self.chunk_length,
                "seed": self.hash_seed,
            }
        )
        return config
