import os
import tempfile

import keras
import numpy as np
import pytest

from keras_llm.layers.attention import BaseAttention
from keras_llm.layers.attention import BlockSparseAttention
from tests.layer_test_case import run_layer_test
from tests.layers.attention.comparison import assert_same_function

B, D = 2, 16


def _x(t, seed=0):
    return np.random.default_rng(seed).normal(size=(B, t, D)).astype("float32")


def _padding(t, valid):
    mask = np.ones((B, t), "int32")
    mask[1, valid:] = 0
    return mask


def test_layer_contract_causal_padding():
    run_layer_test(
        BlockSparseAttention,
        dict(
            num_heads=2,
            key_dim=8,
            block_size=3,
            num_random_blocks=1,
            seed=5,
            rotary_max_wavelength=10000,
        ),
        {None: _x(14), "padding_mask": _padding(14, 10)},
        call_kwargs=dict(use_causal_mask=True),
        expected_output_shape=(B, 14, D),
        expected_num_trainable_weights=8,
    )


def test_layer_contract_bidirectional_dropout():
    run_layer_test(
        BlockSparseAttention,
        dict(num_heads=2, key_dim=4, block_size=4, dropout=0.1),
        _x(16),
        expected_output_shape=(B, 16, D),
    )


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize(
    "pattern",
    [
        dict(num_window_blocks=15),  # the window covers every block
        dict(num_window_blocks=1, num_global_blocks=0, num_random_blocks=8),
    ],
)
def test_every_block_selected_equals_dense(pattern, causal):
    t = 30  # 8 blocks of 4, the last one padded
    layer = BlockSparseAttention(
        num_heads=2, key_dim=8, block_size=4, **pattern
    )
    assert_same_function(
        layer,
        BaseAttention(num_heads=2, key_dim=8),
        _x(t),
        padding_mask=_padding(t, 25),
        use_causal_mask=causal,
    )


@pytest.mark.parametrize("causal", [False, True])
def test_sparse_pattern_equals_dense_under_its_mask(causal):
    t, b = 30, 4
    layer = BlockSparseAttention(
        num_heads=2, key_dim=8, block_size=b, num_random_blocks=1, seed=3
    )
    n = 8
    indices, selected = (
        keras.ops.convert_to_numpy(a) for a in layer.block_pattern(n, causal)
    )
    blocks = np.zeros((n, n), bool)
    for i in range(n):
        blocks[i, indices[i][selected[i]]] = True
    blocks[: layer.num_global_blocks] = True  # global queries see all
    pos = np.arange(t) // b
    allowed = blocks[pos][:, pos]
    assert not allowed.all(), "the pattern should be sparse here"
    assert_same_function(
        layer,
        BaseAttention(num_heads=2, key_dim=8),
        _x(t),
        ref_kwargs=dict(
            attention_mask=np.broadcast_to(allowed, (B, t, t)),
            use_causal_mask=causal,
        ),
        use_causal_mask=causal,
    )


def test_pattern_is_fixed_by_the_seed_and_survives_saving():
    def pattern(layer):
        return [
            keras.ops.convert_to_numpy(a)
            for a in layer.block_pattern(16, False)
        ]

    a = BlockSparseAttention(num_heads=2, key_dim=8, block_size=2, seed=1)
    b = BlockSparseAttention(num_heads=2, key_dim=8, block_size=2, seed=1)
    c = BlockSparseAttention(num_heads=2, key_dim=8, block_size=2, seed=2)
    for x, y in zip(pattern(a), pattern(b)):
        np.testing.assert_array_equal(x, y)
    assert any((x != y).any() for x, y in zip(pattern(a), pattern(c)))

    inputs = keras.Input((32, D))
    model = keras.Model(inputs, a(inputs))
    before = model.predict(_x(32), verbose=0)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "m.keras")
        model.save(path)
        loaded = keras.saving.load_model(path)
    np.testing.assert_array_equal(before, loaded.predict(_x(32), verbose=0))


def test_unknown_length_and_jit_compiled_fit():
    inputs = keras.Input((None, D))
    layer = BlockSparseAttention(num_heads=2, key_dim=8, block_size=4)
    model = keras.Model(inputs, layer(inputs, use_causal_mask=True))
    model.compile("sgd", "mse", jit_compile=True)
    for t in (6, 21):
        history = model.fit(_x(t), _x(t, 1), verbose=0)
        assert np.isfinite(history.history["loss"][0])


def test_bad_arguments():
    with pytest.raises(ValueError, match="block_size"):
        BlockSparseAttention(num_heads=2, key_dim=8, block_size=0)
    with pytest.raises(ValueError, match="odd"):
        BlockSparseAttention(num_heads=2, key_dim=8, num_window_blocks=2)
    with pytest.raises(ValueError, match="num_random_blocks"):
        BlockSparseAttention(num_heads=2, key_dim=8, num_random_blocks=-1)
