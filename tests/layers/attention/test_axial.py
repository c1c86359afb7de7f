import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_llm
from keras_llm.layers import TransformerBlock
from keras_llm.layers.attention import get_attention
from keras_llm.layers.attention.axial import AxialAttention
from tests.layer_test_case import run_layer_test

B, D = 2, 8


def _x(shape, seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype("float32")


def _axial_mask(grid, causal):
    """Dense `(N, N)` mask over the row-major positions of `grid`: query and
    key differ on at most one axis (and, causal, key <= query in the flat
    order, i.e. the dense causal mask)."""
    n = int(np.prod(grid))
    coords = np.stack(np.unravel_index(np.arange(n), grid), axis=-1)
    mask = (coords[:, None, :] != coords[None, :, :]).sum(-1) <= 1
    if causal:
        mask &= np.tril(np.ones((n, n), bool))
    return mask


def _fold_grid(length, axial_shape):
    rows = -(-length // int(np.prod(axial_shape)))
    return (rows,) + tuple(axial_shape)


def _sequence_mask(length, axial_shape, causal):
    """The axial pattern of a folded sequence, cut to its `length`."""
    grid = _fold_grid(length, axial_shape)
    return _axial_mask(grid, causal)[:length, :length]


def _outputs_and_grads(layer, x, keep=1.0, **kwargs):
    """Output and gradient of a random projection of it wrt the input
    (`keep`: a 0/1 weight of the output positions in that projection)."""
    x = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        out = layer(x, **kwargs)
        weights = tf.constant(_x(out.shape, seed=1) * keep)
        loss = tf.reduce_sum(out * weights)
    return out.numpy(), tape.gradient(loss, x).numpy()


def _reference(axial, x_shape, heads, key_dim):
    """Keras' own dense MHA with the weights of `axial`."""
    dense = keras.layers.MultiHeadAttention(num_heads=heads, key_dim=key_dim)
    dense.build(x_shape, x_shape)
    dense.set_weights(axial.get_weights())
    return lambda x, mask: dense(x, x, attention_mask=mask)


# ------------------------------------------------------------ layer contract


@pytest.mark.parametrize("causal", [False, True])
def test_layer_contract_padded_sequence(causal):
    run_layer_test(
        AxialAttention,
        dict(num_heads=2, key_dim=4, axial_shape=(4,)),
        _x((B, 10, D)),  # 10 positions fold into 3 rows of 4: 2 padded
        call_kwargs=dict(use_causal_mask=causal),
        expected_output_shape=(B, 10, D),
        expected_num_trainable_weights=8,
    )


def test_layer_contract_image():
    # int32, not bool: Keras' fit under MirroredStrategy fails on bool
    # inputs (an AddN over bool), for the dense BaseAttention too.
    padding = np.ones((B, 3, 4), "int32")
    padding[1, 2, 1:] = 0
    run_layer_test(
        AxialAttention,
        dict(num_heads=2, key_dim=4, output_shape=6),
        {None: _x((B, 3, 4, D)), "padding_mask": padding},
        expected_output_shape=(B, 3, 4, 6),
    )


# ------------------------------------------------- equality with dense MHA


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize(
    "length, axial_shape",
    [(16, (4,)), (27, (3, 3)), (10, (4,))],
    ids=["2d", "3d", "2d-padded"],
)
def test_sequence_matches_dense_attention(length, axial_shape, causal):
    x = _x((B, length, D))
    layer = AxialAttention(num_heads=2, key_dim=4, axial_shape=axial_shape)
    layer.build(x.shape)
    dense = _reference(layer, x.shape, 2, 4)
    mask = np.broadcast_to(
        _sequence_mask(length, axial_shape, causal), (B, length, length)
    )
    got, got_grad = _outputs_and_grads(layer, x, use_causal_mask=causal)
    want, want_grad = _outputs_and_grads(dense, x, mask=mask)
    np.testing.assert_allclose(got, want, atol=1e-5)
    np.testing.assert_allclose(got_grad, want_grad, atol=1e-5)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("grid", [(3, 4), (2, 3, 2)], ids=["2d", "3d"])
def test_image_matches_dense_attention_on_flat_positions(grid, causal):
    x = _x((B,) + grid + (D,))
    padding = np.ones((B,) + grid, bool)
    padding[1, 0] = False  # the whole first row of the second image
    layer = AxialAttention(num_heads=2, key_dim=4)
    layer.build(x.shape)
    n = int(np.prod(grid))
    flat = x.reshape(B, n, D)
    dense = _reference(layer, flat.shape, 2, 4)
    mask = _axial_mask(grid, causal)[None] & padding.reshape(B, 1, n)
    # Padded queries whose every key is masked are ignored by contract.
    rows = mask.any(-1)
    assert rows.sum() > n  # most queries still see keys
    keep = rows[..., None].astype("float32")
    got, got_grad = _outputs_and_grads(
        layer,
        x,
        keep=keep.reshape((B,) + grid + (1,)),
        padding_mask=padding,
        use_causal_mask=causal,
    )
    want, want_grad = _outputs_and_grads(dense, flat, keep=keep, mask=mask)
    got = got.reshape(B, n, D)
    np.testing.assert_allclose(got[rows], want[rows], atol=1e-5)
    np.testing.assert_allclose(got_grad.reshape(B, n, D), want_grad, atol=1e-5)


@pytest.mark.parametrize("causal", [False, True])
def test_padding_mask_matches_dense_with_both_masks(causal):
    length, axial_shape = 10, (4,)
    x = _x((B, length, D))
    padding = np.ones((B, length), bool)
    padding[0, 7:] = False
    padding[1, [1, 4]] = False
    layer = AxialAttention(num_heads=2, key_dim=4, axial_shape=axial_shape)
    layer.build(x.shape)
    dense = _reference(layer, x.shape, 2, 4)
    mask = (
        _sequence_mask(length, axial_shape, causal)[None]
        & (padding[:, None, :])
    )
    assert mask.any(-1).all()  # every query keeps at least one key
    got, got_grad = _outputs_and_grads(
        layer, x, padding_mask=padding, use_causal_mask=causal
    )
    want, want_grad = _outputs_and_grads(dense, x, mask=mask)
    np.testing.assert_allclose(got, want, atol=1e-5)
    np.testing.assert_allclose(got_grad, want_grad, atol=1e-5)
    # Padded keys really are ignored: changing them changes no valid output.
    changed = x.copy()
    changed[~padding] += 5.0
    again = layer(changed, padding_mask=padding, use_causal_mask=causal)
    np.testing.assert_allclose(
        np.asarray(again)[padding], got[padding], atol=1e-5
    )


# --------------------------------------------------------------- causality


@pytest.mark.parametrize(
    "grid", [(3, 4), (4, 4), (3, 3, 3), (2, 3, 2, 2)], ids=str
)
def test_per_axis_causality_is_the_dense_causal_mask(grid):
    """Key <= query on the axis where they differ <=> key <= query flat."""
    n = int(np.prod(grid))
    coords = np.stack(np.unravel_index(np.arange(n), grid), axis=-1)
    differ = coords[:, None, :] != coords[None, :, :]
    one_axis = differ.sum(-1) == 1
    axis = differ.argmax(-1)
    q_coord = np.take_along_axis(
        np.broadcast_to(coords[:, None, :], (n, n, len(grid))),
        axis[..., None],
        -1,
    )[..., 0]
    k_coord = np.take_along_axis(
        np.broadcast_to(coords[None, :, :], (n, n, len(grid))),
        axis[..., None],
        -1,
    )[..., 0]
    per_axis = np.eye(n, dtype=bool) | (one_axis & (k_coord <= q_coord))
    np.testing.assert_array_equal(per_axis, _axial_mask(grid, causal=True))
    assert not (per_axis & ~np.tril(np.ones((n, n), bool))).any()


def test_causal_dependencies_of_the_layer_are_the_axial_causal_mask():
    """The Jacobian of the layer has exactly the causal axial support."""
    length, axial_shape = 10, (4,)
    x = tf.constant(_x((1, length, D)))
    layer = AxialAttention(num_heads=2, key_dim=4, axial_shape=axial_shape)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        out = tf.reduce_sum(layer(x, use_causal_mask=True), axis=-1)[0]
    # TF's vectorized (pfor) Jacobian of this graph came out wrong on TF
    # 2.21 (the row-by-row one and `tape.gradient` agree with dense MHA).
    jacobian = tape.jacobian(out, x, experimental_use_pfor=False).numpy()
    support = np.abs(jacobian[:, 0]).sum(-1) > 0
    expected = _sequence_mask(length, axial_shape, causal=True)
    np.testing.assert_array_equal(support, expected)
    assert not (support & ~np.tril(np.ones((length, length), bool))).any()


# ------------------------------------------------------ folds and decoding


def test_default_fold_is_square_from_the_static_length():
    x = _x((B, 10, D))  # ceil(sqrt(10)) = 4
    layer = AxialAttention(num_heads=2, key_dim=4)
    explicit = AxialAttention(num_heads=2, key_dim=4, axial_shape=(4,))
    explicit.build(x.shape)
    layer.build(x.shape)
    layer.set_weights(explicit.get_weights())
    np.testing.assert_allclose(
        layer(x, use_causal_mask=True),
        explicit(x, use_causal_mask=True),
        atol=1e-6,
    )
    assert layer._pattern_mask(np.arange(3), 10) is None
    assert AxialAttention(2, 4)._square_fold_length(16) == 4
    assert AxialAttention(2, 4)._square_fold_length(17) == 5
    assert AxialAttention(2, 4)._square_fold_length(1) == 1


def test_unknown_length_with_axial_shape():
    layer = AxialAttention(num_heads=2, key_dim=4, axial_shape=(4,))
    inputs = keras.Input(shape=(None, D))
    model = keras.Model(inputs, layer(inputs, use_causal_mask=True))
    for length in (10, 13, 16):
        x = _x((B, length, D))
        np.testing.assert_allclose(
            model.predict(x, verbose=0),
            layer(x, use_causal_mask=True),
            atol=1e-5,
        )


def test_pattern_mask_and_cached_decoding_match_full_pass():
    length, axial_shape = 10, (2, 2)
    layer = AxialAttention(
        num_heads=2,
        key_dim=4,
        axial_shape=axial_shape,
        rotary_max_wavelength=100,
    )
    pattern = layer._pattern_mask(np.arange(length), length)
    np.testing.assert_array_equal(
        np.asarray(pattern), _sequence_mask(length, axial_shape, False)
    )
    x = _x((B, length, D))
    full = layer(x, use_causal_mask=True)
    cache = np.zeros((B, 2, length, 2, 4), "float32")
    out, cache = layer(
        x[:, :3], use_causal_mask=True, cache=cache, cache_update_index=0
    )
    steps = [out]
    for i in range(3, length):
        out, cache = layer(
            x[:, i : i + 1],
            use_causal_mask=True,
            cache=cache,
            cache_update_index=i,
        )
        steps.append(out)
    np.testing.assert_allclose(np.concatenate(steps, axis=1), full, atol=1e-5)


def test_dropout_only_in_training():
    x = _x((B, 10, D))
    layer = AxialAttention(
        num_heads=2, key_dim=4, axial_shape=(4,), dropout=0.5
    )
    inference = layer(x, training=False)
    np.testing.assert_allclose(inference, layer(x, training=False))
    assert not np.allclose(layer(x, training=True), inference)


# ------------------------------------------------------------ in the models


def test_in_transformer_block_and_registry():
    assert isinstance(
        get_attention("axial", num_heads=2, key_dim=4), AxialAttention
    )
    block = TransformerBlock(
        num_heads=2,
        intermediate_dim=32,
        attention="axial",
        attention_kwargs={"axial_shape": (8,)},
        causal=True,
    )
    x = _x((B, 20, 16))
    y = block(x)
    assert y.shape == (B, 20, 16)
    assert isinstance(block.self_attention, AxialAttention)
    assert block.self_attention.axial_shape == (8,)
    revived = TransformerBlock.from_config(block.get_config())
    revived.build(x.shape)
    revived.set_weights(block.get_weights())
    np.testing.assert_allclose(revived(x), y, atol=1e-6)


def test_gpt_fit_with_jit_compile():
    model = keras_llm.models.GPT(
        vocabulary_size=20,
        num_layers=1,
        num_heads=2,
        hidden_dim=16,
        intermediate_dim=32,
        max_sequence_length=64,
        attention="axial",
        attention_kwargs={"axial_shape": (8,)},
    )
    model.compile(
        optimizer="adam",
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=True,
    )
    tokens = np.random.default_rng(0).integers(0, 20, (4, 21))
    history = model.fit(
        tokens[:, :-1], tokens[:, 1:], batch_size=2, epochs=1, verbose=0
    )
    assert np.isfinite(history.history["loss"][0])
    generated = model.generate([[1, 2, 3]], max_length=12, sampler="greedy")
    assert generated.shape == (1, 12)
    # Greedy decoding with the cache follows the full causal pass.
    logits = model.predict(generated[:, :-1], verbose=0)
    np.testing.assert_array_equal(logits[0, 2:].argmax(-1), generated[0, 3:])


# ------------------------------------------------------------ bad arguments


@pytest.mark.parametrize(
    "axial_shape", [(0,), (4, -2), (2.5,), ("4",), (), (True,), "8", -1]
)
def test_bad_axial_shape(axial_shape):
    with pytest.raises(ValueError, match="AxialAttention.*axial_shape"):
        AxialAttention(num_heads=2, key_dim=4, axial_shape=axial_shape)


def test_bad_inputs():
    layer = AxialAttention(num_heads=2, key_dim=4)
    with pytest.raises(ValueError, match="axial_shape"):
        layer(keras.Input(shape=(None, D)))
    with pytest.raises(ValueError, match="must be None"):
        AxialAttention(num_heads=2, key_dim=4, axial_shape=(4,))(
            _x((B, 3, 4, D))
        )
    with pytest.raises(ValueError, match="rotary"):
        AxialAttention(num_heads=2, key_dim=4, rotary_max_wavelength=100)(
            _x((B, 3, 4, D))
        )
    with pytest.raises(ValueError, match="self-attention"):
        AxialAttention(num_heads=2, key_dim=4, axial_shape=(4,))(
            _x((B, 10, D)), _x((B, 10, D))
        )
    with pytest.raises(ValueError, match="attention_mask"):
        AxialAttention(num_heads=2, key_dim=4, axial_shape=(4,))(
            _x((B, 10, D)), attention_mask=np.ones((B, 10, 10), bool)
        )
    assert AxialAttention(2, 4, axial_shape=8).axial_shape == (8,)
