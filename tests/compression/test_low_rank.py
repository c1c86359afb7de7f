import os

import keras
import numpy as np
import pytest

from keras_llm.compression.low_rank import LowRankDense
from keras_llm.compression.low_rank import LowRankEinsumDense
from keras_llm.compression.low_rank import LowRankModel
from keras_llm.compression.low_rank import factorize
from keras_llm.compression.low_rank import rank_for_energy
from keras_llm.models import GPT
from tests.layer_test_case import run_layer_test

TINY_GPT = dict(
    vocabulary_size=20,
    num_layers=2,
    num_heads=2,
    hidden_dim=16,
    max_sequence_length=16,
)


def _rng(seed=0):
    return np.random.default_rng(seed)


def _dense_model(units_in, units_out, kernel=None, activation=None):
    inputs = keras.Input((units_in,))
    dense = keras.layers.Dense(units_out, activation=activation, name="proj")
    model = keras.Model(inputs, dense(inputs))
    if kernel is not None:
        dense.kernel.assign(kernel)
    dense.bias.assign(_rng(1).normal(size=units_out))
    return model, dense


def _svd(matrix):
    return np.linalg.svd(np.asarray(matrix, "float64"), full_matrices=False)


# --- Layers ---


@pytest.mark.parametrize("activation", [None, "relu"])
def test_full_rank_dense_is_exact(activation):
    dense = keras.layers.Dense(6, activation=activation)
    dense.build((None, 9))
    dense.bias.assign(_rng().normal(size=6))
    low = LowRankDense.from_dense(dense, rank=6)
    x = _rng(2).normal(size=(4, 3, 9)).astype("float32")
    np.testing.assert_allclose(low(x), dense(x), atol=1e-5)
    # The layer computes x @ (A B) + b with A = U s^1/2, B = s^1/2 V^T.
    u, s, vt = _svd(dense.kernel)
    np.testing.assert_allclose(low.left_kernel, u * np.sqrt(s), atol=1e-5)
    np.testing.assert_allclose(
        low.right_kernel, np.sqrt(s)[:, None] * vt, atol=1e-5
    )
    product = np.asarray(low.left_kernel) @ np.asarray(low.right_kernel)
    expected = x @ product + np.asarray(dense.bias)
    if activation == "relu":
        expected = np.maximum(expected, 0)
    np.testing.assert_allclose(low(x), expected, atol=1e-5)


def test_low_rank_dense_layer_checks():
    run_layer_test(
        LowRankDense,
        dict(units=6, rank=2, activation="gelu"),
        _rng().normal(size=(2, 3, 8)).astype("float32"),
        expected_output_shape=(2, 3, 6),
        expected_num_trainable_weights=3,
        run_distributed=False,
    )


def test_low_rank_einsum_dense_layer_checks():
    run_layer_test(
        LowRankEinsumDense,
        dict(
            equation="btd,dnh->btnh",
            rank=3,
            kernel_shape=(8, 2, 4),
            bias_shape=(2, 4),
        ),
        _rng().normal(size=(2, 3, 8)).astype("float32"),
        expected_output_shape=(2, 3, 2, 4),
        expected_num_trainable_weights=3,
        run_mixed_precision=False,
        run_distributed=False,
    )


def test_eckart_young_error_and_output_at_rank_r():
    kernel = _rng(3).normal(size=(12, 10)).astype("float32")
    model, dense = _dense_model(12, 10, kernel)
    new, report = factorize(model, rank=3)
    low = new.get_layer("proj")
    assert isinstance(low, LowRankDense)
    product = np.asarray(low.left_kernel) @ np.asarray(low.right_kernel)
    _, s, _ = _svd(kernel)
    tail = np.sqrt(np.sum(s[3:] ** 2))
    np.testing.assert_allclose(
        np.linalg.norm(kernel - product), tail, rtol=1e-4
    )
    # No other rank-3 matrix does better, e.g. the SVD truncation of a
    # perturbed kernel.
    u2, s2, vt2 = _svd(kernel + 0.1 * _rng(4).normal(size=kernel.shape))
    other = (u2[:, :3] * s2[:3]) @ vt2[:3]
    assert np.linalg.norm(kernel - other) > tail
    (row,) = report.layers
    assert row["shape"] == (12, 10) and row["rank"] == 3
    np.testing.assert_allclose(
        row["relative_error"], tail / np.linalg.norm(kernel), rtol=1e-6
    )
    assert row["params_before"] == 12 * 10 + 10
    assert row["params_after"] == 3 * (12 + 10) + 10
    assert report.params_after == new.count_params()
    x = _rng(5).normal(size=(4, 12)).astype("float32")
    np.testing.assert_allclose(
        new.predict(x, verbose=0),
        x @ product + np.asarray(dense.bias),
        atol=1e-5,
    )
    # The input model is unchanged.
    assert model.get_layer("proj") is dense
    np.testing.assert_array_equal(dense.kernel, kernel)


def test_energy_selects_rank_on_known_spectrum():
    n = 32
    s = 2.0 ** -np.arange(n)
    q1, _ = np.linalg.qr(_rng(6).normal(size=(n, n)))
    q2, _ = np.linalg.qr(_rng(7).normal(size=(n, n)))
    kernel = (q1 * s) @ q2.T
    model, _ = _dense_model(n, n, kernel.astype("float32"))

    def kept(r):  # fraction of the squared singular values in the top r
        return (1 - 4.0**-r) / (1 - 4.0**-n)

    cases = [(0.5, 1), (kept(3) - 1e-6, 3), (kept(3) + 1e-6, 4), (0.999, 5)]
    for energy, expected in cases:
        assert rank_for_energy(s, energy) == expected
        _, report = factorize(model, energy=energy)
        (row,) = report.layers
        assert row["rank"] == expected, (energy, row)
        np.testing.assert_allclose(row["energy"], kept(expected), rtol=1e-4)
        np.testing.assert_allclose(
            row["relative_error"], np.sqrt(1 - kept(expected)), rtol=1e-3
        )
    # energy=1 keeps every direction: no parameter saving, so it is skipped.
    assert rank_for_energy(s, 1.0) == n
    with pytest.raises(ValueError, match="saves too little"):
        factorize(model, energy=1.0)


@pytest.mark.parametrize(
    "equation, bias_axes, input_shape, output_shape",
    [
        ("btd,dnh->btnh", "nh", (5, 12), (None, 2, 5)),
        ("btnh,nhd->btd", "d", (5, 3, 4), (None, 10)),
        ("...b,bc->...c", "c", (5, 12), (10,)),
    ],
)
def test_einsum_dense_factorization(
    equation, bias_axes, input_shape, output_shape
):
    layer = keras.layers.EinsumDense(
        equation, output_shape, bias_axes=bias_axes, name="proj"
    )
    inputs = keras.Input(input_shape)
    model = keras.Model(inputs, layer(inputs))
    layer.bias.assign(_rng(8).normal(size=layer.bias.shape))
    x = _rng(9).normal(size=(2,) + input_shape).astype("float32")

    full = LowRankEinsumDense.from_einsum_dense(layer, rank=10)
    np.testing.assert_allclose(full(x), layer(x), atol=1e-5)

    new, report = factorize(model, rank=2)
    (row,) = report.layers
    assert row["shape"] == (12, 10) and row["rank"] == 2
    low = new.get_layer("proj")
    assert isinstance(low, LowRankEinsumDense)
    # Reference: truncate the kernel reshaped to (contracted, outputs).
    kernel_axes = equation.split(",")[1].split("->")[0]
    kernel = np.asarray(layer.kernel, "float64")
    contracted = [a for a in kernel_axes if a in equation.split(",")[0]]
    order = [kernel_axes.index(a) for a in contracted] + [
        i for i, a in enumerate(kernel_axes) if a not in contracted
    ]
    permuted = np.transpose(kernel, order)
    matrix = permuted.reshape(12, 10)
    u, s, vt = _svd(matrix)
    truncated = ((u[:, :2] * s[:2]) @ vt[:2]).reshape(permuted.shape)
    truncated = np.transpose(truncated, np.argsort(order))
    np.testing.assert_allclose(low.kernel, truncated, atol=1e-5)
    expected = np.einsum(equation, x.astype("float64"), truncated) + np.asarray(
        layer.bias
    )
    np.testing.assert_allclose(new.predict(x, verbose=0), expected, atol=1e-4)
    np.testing.assert_allclose(
        row["relative_error"],
        np.sqrt(np.sum(s[2:] ** 2) / np.sum(s**2)),
        rtol=1e-6,
    )


def test_sequential_and_layers_of_an_inner_graph(tmp_path):
    seq = keras.Sequential(
        [
            keras.Input((32,)),
            keras.layers.Dense(64, activation="relu", name="a"),
            keras.layers.Dense(8, name="b"),
        ],
        name="inner",
    )
    new, report = factorize(seq, rank=6)
    assert isinstance(new, keras.Sequential)
    assert all(isinstance(layer, LowRankDense) for layer in new.layers)
    assert new.count_params() == report.params_after < seq.count_params()
    x = _rng(13).normal(size=(3, 32)).astype("float32")
    path = os.path.join(tmp_path, "seq.keras")
    new.save(path)
    np.testing.assert_allclose(
        keras.saving.load_model(path).predict(x, verbose=0),
        new.predict(x, verbose=0),
        atol=1e-6,
    )
    # Layers of a graph nested in the model are reported, not silently
    # left in place.
    inputs = keras.Input((32,))
    outer = keras.Model(
        inputs, keras.layers.Dense(16, name="head")(seq(inputs))
    )
    new, report = factorize(outer, rank=3)
    assert [r["path"] for r in report.layers] == ["head"]
    skipped = {s["path"]: s["reason"] for s in report.skipped}
    assert set(skipped) == {"inner/a", "inner/b"}
    assert "functional graph of 'inner'" in skipped["inner/a"]


@keras.saving.register_keras_serializable(package="keras_llm_tests")
class _Projector(keras.layers.Layer):
    """A layer that builds an EinsumDense in `build` (like the attention)."""

    def build(self, input_shape):
        self.proj = keras.layers.EinsumDense(
            "btd,dnh->btnh", (None, 2, 8), bias_axes="nh", name="proj"
        )
        self.proj.build(input_shape)

    def call(self, x):
        return self.proj(x)


def test_nested_einsum_dense_saves_and_loads(tmp_path):
    inputs = keras.Input((4, 16))
    model = keras.Model(inputs, _Projector(name="projector")(inputs))
    new, report = factorize(model, rank=3)
    assert isinstance(new, LowRankModel)
    assert [r["path"] for r in report.layers] == ["projector/proj"]
    x = _rng(10).normal(size=(2, 4, 16)).astype("float32")
    path = os.path.join(tmp_path, "nested.keras")
    new.save(path)
    loaded = keras.saving.load_model(path)
    inner = loaded.base_model.get_layer("projector").proj
    assert isinstance(inner, LowRankEinsumDense)
    np.testing.assert_allclose(
        loaded.predict(x, verbose=0), new.predict(x, verbose=0), atol=1e-6
    )


# --- GPT ---


def test_gpt_factorized_trains_saves_and_loads(tmp_path):
    gpt = GPT(**TINY_GPT)
    tokens = _rng(11).integers(0, 20, (8, 9)).astype("int32")
    x, y = tokens[:, :-1], tokens[:, 1:]
    before = gpt.predict(x, verbose=0)
    dense_count = sum(
        isinstance(layer, keras.layers.Dense) for layer in gpt._flatten_layers()
    )

    new, report = factorize(gpt, rank=4, layers=lambda layer: True)
    assert isinstance(new, LowRankModel)
    assert len(report.layers) == dense_count == 8
    assert not report.skipped
    assert new.count_params() == report.params_after < report.params_before
    saved = sum(r["params_before"] - r["params_after"] for r in report.layers)
    assert report.params_before - report.params_after == saved
    qkv = new.base_model.blocks[0].self_attention.qkv_dense
    assert isinstance(qkv, LowRankDense) and qkv.rank == 4
    # The old kernels are gone from the model's weights.
    assert not any(w.path.endswith("/kernel") for w in new.weights)
    # The input model is untouched.
    np.testing.assert_array_equal(gpt.predict(x, verbose=0), before)
    assert type(gpt.blocks[0].self_attention.qkv_dense) is keras.layers.Dense

    new.compile(
        optimizer=keras.optimizers.Adam(1e-2),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    history = new.fit(x, y, batch_size=8, epochs=6, verbose=0)
    losses = history.history["loss"]
    assert losses[-1] < losses[0] - 0.1, losses

    path = os.path.join(tmp_path, "gpt_low_rank.keras")
    new.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded, LowRankModel)
    assert isinstance(
        loaded.base_model.blocks[1].feed_forward.down_dense, LowRankDense
    )
    np.testing.assert_array_equal(
        loaded.predict(x, verbose=0), new.predict(x, verbose=0)
    )
    assert loaded.count_params() == new.count_params()


def test_gpt_layer_selection_by_pattern():
    gpt = GPT(**TINY_GPT)
    new, report = factorize(gpt, rank=2, layers=["block_*/feed_forward/*"])
    paths = [r["path"] for r in report.layers]
    assert paths == [
        "block_0/feed_forward/up",
        "block_0/feed_forward/down",
        "block_1/feed_forward/up",
        "block_1/feed_forward/down",
    ]
    attention = new.base_model.blocks[0].self_attention
    assert type(attention.qkv_dense) is keras.layers.Dense


# --- Skips and errors ---


def test_layers_that_would_grow_are_skipped_and_reported():
    inputs = keras.Input((32,))
    hidden = keras.layers.Dense(64, name="wide")(inputs)
    outputs = keras.layers.Dense(4, name="square")(
        keras.layers.Dense(4, name="narrow")(hidden)
    )
    model = keras.Model(inputs, outputs)
    new, report = factorize(model, rank=3)
    # 64x4 at rank 3: 204 < 256 parameters; 4x4 at rank 3: 24 > 16.
    assert {r["path"] for r in report.layers} == {"wide", "narrow"}
    skipped = {s["path"]: s["reason"] for s in report.skipped}
    assert set(skipped) == {"square"}
    assert "saves too little" in skipped["square"]
    assert type(new.get_layer("square")) is keras.layers.Dense
    assert isinstance(new.get_layer("wide"), LowRankDense)
    x = _rng(12).normal(size=(2, 32)).astype("float32")
    np.testing.assert_allclose(
        new.get_layer("square")(np.ones((1, 4), "float32")),
        model.get_layer("square")(np.ones((1, 4), "float32")),
    )
    assert new.predict(x, verbose=0).shape == (2, 4)
    # 3 * (32 + 64) = 288 saves 86% of 2048: min_reduction=0.9 skips it.
    with pytest.raises(ValueError, match="no layer to factorize"):
        factorize(model, rank=3, min_reduction=0.9)


def test_rank_larger_than_kernel_names_the_layer():
    model, _ = _dense_model(12, 10)
    with pytest.raises(ValueError, match="'proj'.*12x10.*between 1 and 10"):
        factorize(model, rank=11)
    dense = model.get_layer("proj")
    with pytest.raises(ValueError, match="'proj'"):
        LowRankDense.from_dense(dense, rank=11)


@pytest.mark.parametrize("energy", [0.0, -0.2, 1.5, True])
def test_energy_out_of_range(energy):
    model, _ = _dense_model(12, 10)
    with pytest.raises(ValueError, match=r"energy.*\(0, 1\]"):
        factorize(model, energy=energy)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(), "exactly one of `rank` and `energy`"),
        (dict(rank=2, energy=0.5), "exactly one of `rank` and `energy`"),
        (dict(rank=0), "positive integer"),
        (dict(rank=2, min_reduction=1.0), "min_reduction"),
        (dict(rank=2, layers=["nope"]), r"matching \['nope'\].*proj"),
    ],
)
def test_bad_arguments(kwargs, match):
    model, _ = _dense_model(12, 10)
    with pytest.raises(ValueError, match=match):
        factorize(model, **kwargs)


def test_model_without_factorizable_layer():
    inputs = keras.Input((5,), dtype="int32")
    outputs = keras.layers.Embedding(10, 4)(inputs)
    with pytest.raises(ValueError, match="no layer to factorize"):
        factorize(keras.Model(inputs, outputs), rank=2)
    with pytest.raises(TypeError, match="keras.Model"):
        factorize(keras.layers.Dense(3), rank=2)
