"""Tests of `LSHAttention` (Reformer): the layer contract, exactness with one
bucket, accuracy on clustered inputs with many buckets, deterministic
hashing, cached decoding, and use inside `TransformerBlock` and `GPT`.

Reference: dense shared-QK attention computed in NumPy (float64) from the
layer's own weights: keys are the L2-normalised queries, a query's score
against its own key is -1e5 (Reformer), masked keys get -1e9.
"""

import inspect
import re

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_llm
from keras_llm.layers import TransformerBlock
from keras_llm.layers.attention import get_attention
from keras_llm.layers.attention.lsh import LSHAttention
from tests.layer_test_case import run_layer_test

B, T, D = 2, 12, 16

# Test 3 (clustered inputs, 8 buckets, 4 rounds): the largest allowed
# difference between LSH and dense shared-QK attention.
CLUSTER_ATOL = 1e-3


def _x(seed=0, shape=(B, T, D)):
    return np.random.default_rng(seed).normal(size=shape).astype("float32")


def _np(x):
    return keras.ops.convert_to_numpy(x)


def _dense_reference(layer, x, padding_mask=None, causal=False):
    """Dense shared-QK attention from `layer`'s weights, in float64."""
    x = x.astype("float64")
    wq, bq = (_np(w).astype("float64") for w in layer.query_dense.weights)
    wv, bv = (_np(w).astype("float64") for w in layer.value_dense.weights)
    wo, bo = (_np(w).astype("float64") for w in layer.output_dense.weights)
    q = np.einsum("btd,dhk->bthk", x, wq) + bq
    k = q / np.sqrt(np.sum(q * q, axis=-1, keepdims=True) + 1e-12)
    v = np.einsum("btd,dhk->bthk", x, wv) + bv
    scores = np.einsum("bqhd,bkhd->bhqk", q, k)  # unit keys, unscaled
    length = x.shape[1]
    scores = np.where(np.eye(length, dtype=bool), -1e5, scores)
    allowed = np.ones((x.shape[0], 1, length, length), bool)
    if padding_mask is not None:
        allowed &= np.asarray(padding_mask, bool)[:, None, None, :]
    if causal:
        allowed &= np.tril(np.ones((length, length), bool))
    scores = np.where(allowed, scores, -1e9)
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    out = np.einsum("bhqk,bkhd->bqhd", probs, v)
    return np.einsum("bqhd,hdo->bqo", out, wo) + bo


# ------------------------------------------------------------- 1. contract
@pytest.mark.parametrize("causal", [False, True])
def test_layer_contract(causal):
    # T=12 is not a multiple of chunk_length=5: padded internally.
    run_layer_test(
        LSHAttention,
        dict(num_heads=2, key_dim=8, num_buckets=4, num_hashes=2,
             chunk_length=5, seed=3),
        _x(),
        call_kwargs={"use_causal_mask": causal},
        expected_output_shape=(B, T, D),
        # query, value, attention_output (kernel + bias): no key projection.
        expected_num_trainable_weights=6,
        atol=1e-6,
    )  # fmt: skip


def test_layer_contract_padding_mask_and_rotary():
    mask = np.ones((B, T), "int32")
    mask[0, 9:] = 0
    run_layer_test(
        LSHAttention,
        dict(num_heads=2, key_dim=4, num_buckets=2, num_hashes=3,
             chunk_length=4, rotary_max_wavelength=100, use_bias=False),
        {None: _x(1), "padding_mask": mask},
        call_kwargs={"use_causal_mask": True},
        expected_output_shape=(B, T, D),
        expected_num_trainable_weights=3,
        run_distributed=False,
    )  # fmt: skip


def test_no_key_projection_and_fixed_rotations():
    layer = LSHAttention(num_heads=2, key_dim=8, num_buckets=6, num_hashes=3)
    layer(_x())
    names = sorted(w.path.split("/", 1)[1] for w in layer.trainable_weights)
    assert names == [
        "attention_output/bias", "attention_output/kernel",
        "query/bias", "query/kernel", "value/bias", "value/kernel",
    ]  # fmt: skip
    assert layer.key_dense is None
    assert tuple(layer.hash_rotations.shape) == (8, 3, 3)
    assert not layer.hash_rotations.trainable


# ------------------------------------------------- 2. exact with 1 bucket
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("num_hashes", [1, 3])
def test_one_bucket_one_chunk_is_dense_shared_qk(causal, num_hashes):
    x = _x(2)
    padding = np.ones((B, T), bool)
    padding[1, 8:] = False
    layer = LSHAttention(
        num_heads=2, key_dim=8, num_buckets=1, num_hashes=num_hashes,
        chunk_length=16,
    )  # fmt: skip
    got = _np(layer(x, padding_mask=padding, use_causal_mask=causal))
    want = _dense_reference(layer, x, padding, causal)
    # Outputs at padded positions are unspecified; compare the real ones.
    diff = np.abs(got - want)[padding].max()
    print(f"1 bucket, causal={causal}, hashes={num_hashes}: {diff:.2e}")
    assert diff <= 1e-5, diff


def test_weights_from_keras_multi_head_attention():
    """`query` -> shared query/key, `value`/`attention_output` unchanged,
    `key` dropped: equals dense shared-QK attention of those weights."""
    x = _x(3)
    mha = keras.layers.MultiHeadAttention(num_heads=2, key_dim=8)
    mha(x, x)
    layer = LSHAttention(num_heads=2, key_dim=8, num_buckets=1,
                         chunk_length=T)  # fmt: skip
    layer.build(x.shape)
    layer.query_dense.set_weights(mha.query_dense.get_weights())
    layer.value_dense.set_weights(mha.value_dense.get_weights())
    layer.output_dense.set_weights(mha.output_dense.get_weights())
    # The reference from MHA's own weights, with its key kernel ignored.
    wq, bq = mha.query_dense.get_weights()
    q = np.einsum("btd,dhk->bthk", x, wq) + bq
    k = q / np.linalg.norm(q, axis=-1, keepdims=True)
    k_mha = np.einsum(
        "btd,dhk->bthk", x, mha.key_dense.get_weights()[0]
    ) + mha.key_dense.get_weights()[1]  # fmt: skip
    assert not np.allclose(k, k_mha)  # the dropped key is really different
    for causal in (False, True):
        got = _np(layer(x, use_causal_mask=causal))
        want = _dense_reference(layer, x, causal=causal)
        np.testing.assert_allclose(got, want, atol=1e-5)


# ---------------------------------------- 3. many buckets, clustered inputs
def _clustered(seed=0, batch=2, length=23, scale=100.0):
    """Inputs whose projected queries (identity-like query kernel below)
    form 8 tight clusters +/-e_i (i < 4) in each head, cluster = position
    % 8 (so the clusters interleave and sorting has work to do), and whose
    values come from the other 16, random, input dims."""
    rng = np.random.default_rng(seed)
    x = np.zeros((batch, length, 32), "float32")
    for t in range(length):
        cluster = t % 8
        sign = 1.0 if cluster % 2 == 0 else -1.0
        for head in range(2):
            x[:, t, 8 * head + cluster // 2] = scale * sign
    x[:, :, :16] += 1e-3 * rng.normal(size=(batch, length, 16))
    x[:, :, 16:] = rng.normal(size=(batch, length, 16))
    return x


def _clustered_layer(seed=0):
    layer = LSHAttention(num_heads=2, key_dim=8, num_buckets=8,
                         num_hashes=4, chunk_length=6, seed=seed)  # fmt: skip
    layer.build((2, 23, 32))
    wq = np.zeros((32, 2, 8), "float32")
    wv = np.zeros((32, 2, 8), "float32")
    rng = np.random.default_rng(1)
    for head in range(2):
        wq[8 * head : 8 * head + 8, head] = np.eye(8)
        wv[16:, head] = rng.normal(size=(16, 8)) / 4
    layer.query_dense.set_weights([wq, np.zeros((2, 8), "float32")])
    layer.value_dense.set_weights([wv, np.zeros((2, 8), "float32")])
    return layer


@pytest.mark.parametrize("causal", [False, True])
def test_many_buckets_match_dense_on_clustered_inputs(causal):
    """8 buckets, 4 rounds, chunks of 6 over T=23: max |LSH - dense| <=
    CLUSTER_ATOL (1e-3) where every attended key shares its query's bucket.

    Premise, checked below: each cluster hashes to one bucket in every
    round and no bucket holds more than `chunk_length` positions, so a
    query's whole bucket lies in its chunk and the one before (or after).
    Keys of other clusters score <= 0 against a same-cluster score of
    100, so dense attention gives them weight < 1e-15. With
    `use_causal_mask` the first member of each cluster (positions < 8) has
    no earlier same-cluster key, so dense attention spreads over the other
    clusters there; only positions >= 8 are compared.
    """
    x = _clustered()
    layer = _clustered_layer()
    buckets = _np(layer.hash_buckets(x))  # (B, H, R, T)
    for cluster in range(8):
        members = buckets[..., cluster::8]
        assert (members == members[..., :1]).all(), "a cluster was split"
    load = max(np.bincount(row).max() for row in buckets.reshape(-1, 23))
    assert load <= layer.chunk_length, load

    got = _np(layer(x, use_causal_mask=causal))
    want = _dense_reference(layer, x, causal=causal)
    rows = slice(8, None) if causal else slice(None)
    diff = np.abs(got - want)[:, rows].max()
    print(f"clustered, causal={causal}: max |LSH - dense| = {diff:.2e}")
    assert diff <= CLUSTER_ATOL, diff

    # Not trivial: the reference varies a lot across positions, ...
    assert want[:, rows].std(axis=1).min() > 0.1
    # ... and on random, unclustered inputs the same hashing is far off.
    x_random = _x(4, (2, 23, 32)) * 3.0
    far = np.abs(
        _np(layer(x_random, use_causal_mask=causal))
        - _dense_reference(layer, x_random, causal=causal)
    )[:, rows].max()
    print(f"random, causal={causal}: max |LSH - dense| = {far:.2e}")
    assert far > 50 * CLUSTER_ATOL, far


# ----------------------------------------------------- 4. deterministic hash
def test_hashing_is_determined_by_the_seed():
    x = _x(5)
    kwargs = dict(num_heads=2, key_dim=8, num_buckets=8, num_hashes=2,
                  chunk_length=4)  # fmt: skip
    a = LSHAttention(**kwargs, seed=7)
    b = LSHAttention(**kwargs, seed=7)
    c = LSHAttention(**kwargs, seed=8)
    a.build(x.shape)
    for other in (b, c):  # same projections, so only the seed differs
        other.build(x.shape)
        for mine, theirs in zip(other.trainable_weights, a.trainable_weights):
            mine.assign(theirs)
    np.testing.assert_array_equal(_np(a.hash_rotations), _np(b.hash_rotations))
    bucket_a = _np(a.hash_buckets(x))
    np.testing.assert_array_equal(bucket_a, _np(b.hash_buckets(x)))
    assert (bucket_a != _np(c.hash_buckets(x))).mean() > 0.3
    np.testing.assert_array_equal(_np(a(x)), _np(b(x)))
    assert not np.allclose(_np(a(x)), _np(c(x)))
    assert LSHAttention.from_config(a.get_config()).hash_seed == 7


def test_saved_layer_hashes_identically(tmp_path):
    x = _x(6)
    inputs = keras.Input((T, D))
    layer = LSHAttention(num_heads=2, key_dim=8, num_buckets=4,
                         chunk_length=4, seed=11)  # fmt: skip
    model = keras.Model(inputs, layer(inputs, use_causal_mask=True))
    path = str(tmp_path / "lsh.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    revived = loaded.layers[-1]
    np.testing.assert_array_equal(
        _np(revived.hash_buckets(x)), _np(layer.hash_buckets(x))
    )
    np.testing.assert_array_equal(_np(loaded(x)), _np(model(x)))


# ------------------------------------------------------ other behaviours
def test_causal_outputs_ignore_the_future():
    x = _x(7)
    layer = LSHAttention(num_heads=2, key_dim=8, num_buckets=4,
                         chunk_length=4)  # fmt: skip
    changed = x.copy()
    changed[:, 8:] += 5.0
    a = _np(layer(x, use_causal_mask=True))
    b = _np(layer(changed, use_causal_mask=True))
    np.testing.assert_allclose(a[:, :8], b[:, :8], atol=1e-6)
    assert not np.allclose(a[:, 8:], b[:, 8:])


def test_dropout_only_in_training():
    x = _x(8)
    layer = LSHAttention(num_heads=2, key_dim=8, num_buckets=4,
                         chunk_length=4, dropout=0.5)  # fmt: skip
    inference = _np(layer(x, training=False))
    np.testing.assert_allclose(inference, _np(layer(x, training=False)))
    assert not np.allclose(_np(layer(x, training=True)), inference)


def test_unknown_length_in_a_traced_function():
    layer = LSHAttention(num_heads=2, key_dim=8, num_buckets=4,
                         chunk_length=4)  # fmt: skip
    layer.build((None, None, D))

    @tf.function(input_signature=[tf.TensorSpec((None, None, D), "float32")])
    def run(x):
        return layer(x, use_causal_mask=True)

    for length in (7, 12):  # one trace, lengths with and without padding
        x = _x(9, (B, length, D))
        np.testing.assert_allclose(
            _np(run(x)), _np(layer(x, use_causal_mask=True)), atol=1e-5
        )


def test_cached_decoding_is_dense_shared_qk():
    """Decoding attends densely over the cache (with the -1e5 self score):
    equal to the full pass with one bucket and one chunk."""
    x = _x(10)
    layer = LSHAttention(num_heads=2, key_dim=8, num_buckets=1,
                         chunk_length=T, rotary_max_wavelength=100)  # fmt: skip
    full = _np(layer(x, use_causal_mask=True))
    cache = np.zeros((B, 2, T, 2, 8), "float32")
    out, cache = layer(
        x[:, :5], use_causal_mask=True, cache=cache, cache_update_index=0
    )
    steps = [_np(out)]
    for i in range(5, T):
        out, cache = layer(
            x[:, i : i + 1],
            use_causal_mask=True,
            cache=cache,
            cache_update_index=i,
        )
        steps.append(_np(out))
    np.testing.assert_allclose(np.concatenate(steps, axis=1), full, atol=1e-5)


def test_rejects_cross_attention_and_attention_mask():
    layer = LSHAttention(num_heads=2, key_dim=8, chunk_length=4)
    with pytest.raises(ValueError, match="cross-attention"):
        layer(_x(), _x(1))
    with pytest.raises(ValueError, match="attention_mask"):
        layer(_x(), attention_mask=np.ones((B, T, T), bool))


# ----------------------------------------------- 5. in a block and in GPT
def test_in_transformer_block_and_registry():
    assert isinstance(
        get_attention("lsh", num_heads=2, key_dim=8), LSHAttention
    )
    block = TransformerBlock(
        num_heads=2,
        intermediate_dim=32,
        attention="lsh",
        attention_kwargs={"num_buckets": 4, "chunk_length": 4, "seed": 2},
        causal=True,
    )
    run_layer_test(
        TransformerBlock,
        dict(num_heads=2, intermediate_dim=32, attention="lsh",
             attention_kwargs={"num_buckets": 4, "chunk_length": 4},
             causal=True),
        _x(),
        expected_output_shape=(B, T, D),
        run_mixed_precision=False,
        run_distributed=False,
    )  # fmt: skip
    y = block(_x())
    assert isinstance(block.self_attention, LSHAttention)
    assert block.self_attention.hash_seed == 2
    assert y.shape == (B, T, D)


def test_gpt_fit_step_with_xla():
    model = keras_llm.models.GPT(
        vocabulary_size=50,
        num_layers=1,
        num_heads=2,
        hidden_dim=16,
        intermediate_dim=32,
        max_sequence_length=32,
        attention="lsh",
        attention_kwargs={"chunk_length": 8, "num_buckets": 4},
    )
    model.compile(
        optimizer=keras.optimizers.Adam(1e-2),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=True,
    )
    tokens = np.random.default_rng(0).integers(0, 50, (4, 20))
    before = [w.numpy().copy() for w in model.trainable_weights]
    history = model.fit(tokens, tokens, batch_size=2, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"]).all()
    assert any(
        not np.allclose(w0, w.numpy())
        for w0, w in zip(before, model.trainable_weights)
    )
    out = model.generate([[1, 2, 3]], max_length=8, sampler="greedy")
    assert np.asarray(out).shape == (1, 8)


# --------------------------------------------------------- 6. bad arguments
@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(num_buckets=3), "num_buckets"),
        (dict(num_buckets=0), "num_buckets"),
        (dict(chunk_length=0), "chunk_length"),
        (dict(num_hashes=0), "num_hashes"),
        (dict(num_hashes=1.5), "num_hashes"),
        (dict(seed=-1), "seed"),
        (dict(seed="a"), "seed"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=f"LSHAttention.*{message}"):
        LSHAttention(num_heads=2, key_dim=8, **kwargs)


def test_docstring_example_runs(monkeypatch, tmp_path):
    # Until the package exports it, make `keras_llm.layers.attention.
    # LSHAttention` resolve for the example.
    monkeypatch.setattr(
        keras_llm.layers.attention, "LSHAttention", LSHAttention,
        raising=False,
    )  # fmt: skip
    monkeypatch.chdir(tmp_path)
    doc = inspect.getdoc(LSHAttention)
    (code,) = re.findall(r"```python\n(.*?)```", doc, flags=re.S)
    exec(compile(code, "<LSHAttention example>", "exec"), {})
