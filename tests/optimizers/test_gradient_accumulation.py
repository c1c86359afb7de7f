"""GradientAccumulation: k micro-batches of b against one batch of k*b.

Each comparison trains two copies of the same model for 10 updates on the
same examples in the same order: one with the plain optimizer on batches of
k*b, one with the wrapper on micro-batches of b, and compares the weights.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_llm.optimizers import GradientAccumulation

K, B, UPDATES = 4, 8, 10


def _data(n=K * B * UPDATES, scale=1.0):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 6)).astype("float32")
    y = (scale * np.tanh(x @ rng.normal(size=(6, 1)))).astype("float32")
    return x, y


def _inner(kind, clip=True):
    if kind == "sgd":
        return keras.optimizers.SGD(0.1, momentum=0.5)
    schedule = keras.optimizers.schedules.CosineDecay(
        0.0, decay_steps=UPDATES, warmup_target=1e-2, warmup_steps=3
    )
    optimizer = keras.optimizers.AdamW(
        schedule, weight_decay=0.1, global_clipnorm=0.5 if clip else None
    )
    optimizer.exclude_from_weight_decay(var_names=["bias"])
    return optimizer


def _mlp(kind, steps, jit_compile, strategy):
    # Under tf.distribute Keras clips each replica's partial gradient
    # before the all-reduce (any optimizer), and a replica's share of a
    # large batch differs from its share of the micro-batches; so the
    # clipping is compared on one device only.
    clip = strategy.num_replicas_in_sync == 1
    with strategy.scope():
        keras.utils.set_random_seed(1)
        model = keras.Sequential(
            [
                keras.Input((6,)),
                keras.layers.Dense(16, activation="tanh"),
                keras.layers.Dense(1),
            ]
        )
        optimizer = _inner(kind, clip)
        if steps > 1:
            optimizer = GradientAccumulation(optimizer, steps)
        model.compile(optimizer=optimizer, loss="mse", jit_compile=jit_compile)
    return model


def _int(variable):
    return int(keras.ops.convert_to_numpy(variable))


def _max_difference(a, b):
    return max(
        float(np.max(np.abs(p - q)))
        for p, q in zip(a.get_weights(), b.get_weights())
    )


def _compare(kind, jit_compile, strategy, scale=1.0):
    x, y = _data(scale=scale)
    large = _mlp(kind, 1, jit_compile, strategy)
    large.fit(x, y, batch_size=K * B, shuffle=False, verbose=0)
    micro = _mlp(kind, K, jit_compile, strategy)
    micro.fit(x, y, batch_size=B, shuffle=False, verbose=0)
    return large, micro


@pytest.mark.parametrize("kind", ["sgd", "adamw"])
@pytest.mark.parametrize(
    "jit_compile,distributed",
    [(False, False), (True, False), (False, True)],
    ids=["eager-graph", "xla", "mirrored"],
)
def test_micro_batches_equal_one_large_batch(
    kind, jit_compile, distributed, mirrored_strategy
):
    strategy = (
        mirrored_strategy if distributed else tf.distribute.get_strategy()
    )
    large, micro = _compare(kind, jit_compile, strategy)
    assert _int(micro.optimizer.iterations) == UPDATES
    assert _int(micro.optimizer.micro_steps) == K * UPDATES
    assert _int(large.optimizer.iterations) == UPDATES
    assert _max_difference(large, micro) <= 1e-5
    # The weights moved: the comparison is not between two untrained models.
    untrained = _mlp(kind, 1, False, tf.distribute.get_strategy())
    assert _max_difference(untrained, micro) > 1e-2


# float16 compute: the large and the micro batches round differently inside
# the forward pass, so the weights agree to within float16 precision of the
# activations, not to float32's 1e-5. Measured: at most 6e-5 (SGD) and
# 2e-5 (AdamW); the bound leaves room for other CPUs.
MIXED_FLOAT16_TOLERANCE = 5e-4


@pytest.mark.parametrize("kind", ["sgd", "adamw"])
@pytest.mark.parametrize("distributed", [False, True], ids=["one", "mirrored"])
def test_under_mixed_float16_inside_the_loss_scale_optimizer(
    kind, distributed, mirrored_strategy
):
    strategy = (
        mirrored_strategy if distributed else tf.distribute.get_strategy()
    )
    keras.config.set_dtype_policy("mixed_float16")
    # Small targets keep the scaled float16 gradients finite, so no step is
    # skipped and both runs make the same 10 updates.
    large, micro = _compare(kind, False, strategy, scale=0.01)
    assert isinstance(micro.optimizer, keras.optimizers.LossScaleOptimizer)
    assert isinstance(micro.optimizer.inner_optimizer, GradientAccumulation)
    assert _int(micro.optimizer.iterations) == UPDATES
    assert _int(large.optimizer.iterations) == UPDATES
    assert _max_difference(large, micro) <= MIXED_FLOAT16_TOLERANCE


def test_schedule_and_weight_decay_see_updates_not_micro_steps():
    inner = keras.optimizers.AdamW(
        keras.optimizers.schedules.PolynomialDecay(1.0, 100, 0.0),
        weight_decay=0.5,
    )
    optimizer = GradientAccumulation(inner, steps=5)
    variable = keras.Variable(np.ones(3, "float32"))
    for _ in range(10):
        optimizer.apply([np.zeros(3, "float32")], [variable])
    assert int(optimizer.iterations) == 2
    assert int(optimizer.micro_steps) == 10
    np.testing.assert_allclose(
        float(optimizer.learning_rate), 1.0 - 2 / 100, rtol=1e-6
    )
    # Zero gradients: only weight decay moves the variable, twice, by the
    # rates of updates 0 and 1: (1 - 0.5 * 1.0) * (1 - 0.5 * 0.99).
    np.testing.assert_allclose(
        variable.numpy(), np.full(3, 0.5 * (1 - 0.5 * 0.99)), rtol=1e-5
    )


def test_embedding_gradients_and_gpt_under_mirrored_strategy(mirrored_strategy):
    """A GPT's token embedding gets sparse (IndexedSlices) gradients."""
    from keras_llm.models import GPT

    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 16, size=(K * B * 3, 9)).astype("int32")
    x, y = tokens[:, :-1], tokens[:, 1:]

    def model(steps):
        with mirrored_strategy.scope():
            keras.utils.set_random_seed(3)
            gpt = GPT(
                vocabulary_size=16,
                num_layers=1,
                num_heads=2,
                hidden_dim=8,
                max_sequence_length=8,
            )
            optimizer = keras.optimizers.AdamW(1e-2)
            if steps > 1:
                optimizer = GradientAccumulation(optimizer, steps)
            gpt.compile(
                optimizer=optimizer,
                loss=keras.losses.SparseCategoricalCrossentropy(
                    from_logits=True
                ),
            )
        return gpt

    large, micro = model(1), model(K)
    large.fit(x, y, batch_size=K * B, shuffle=False, verbose=0)
    micro.fit(x, y, batch_size=B, shuffle=False, verbose=0)
    assert _int(micro.optimizer.iterations) == 3
    assert _max_difference(large, micro) <= 1e-5


def test_resumed_mid_accumulation_equals_uninterrupted(tmp_path):
    x, y = _data()
    strategy = tf.distribute.get_strategy()
    uninterrupted = _mlp("adamw", K, False, strategy)
    uninterrupted.fit(x[:80], y[:80], batch_size=B, shuffle=False, verbose=0)

    first = _mlp("adamw", K, False, strategy)
    first.fit(x[:48], y[:48], batch_size=B, shuffle=False, verbose=0)
    assert _int(first.optimizer.micro_steps) == 6  # mid-accumulation
    path = tmp_path / "mid.keras"
    first.save(path)
    resumed = keras.saving.load_model(path)
    assert isinstance(resumed.optimizer, GradientAccumulation)
    assert _int(resumed.optimizer.micro_steps) == 6
    resumed.fit(x[48:80], y[48:80], batch_size=B, shuffle=False, verbose=0)
    assert _int(resumed.optimizer.iterations) == int(
        uninterrupted.optimizer.iterations
    )
    assert _max_difference(uninterrupted, resumed) <= 1e-6


def test_backend_agnostic_path_matches_the_tensorflow_path():
    """`_select_apply` (JAX, torch) against `apply` on TensorFlow."""
    rng = np.random.default_rng(0)
    grads = [rng.normal(size=(3, 2)).astype("float32") for _ in range(6)]

    def run(select):
        variable = keras.Variable(np.ones((3, 2), "float32"))
        optimizer = GradientAccumulation(keras.optimizers.Adam(0.1), 3)
        optimizer.build([variable])
        for grad in grads:
            if select:
                optimizer._select_apply(
                    [grad], [variable], optimizer.accumulators
                )
            else:
                optimizer.apply([grad], [variable])
        return variable.numpy(), optimizer

    tf_path, tf_optimizer = run(False)
    select_path, select_optimizer = run(True)
    np.testing.assert_allclose(select_path, tf_path, atol=1e-7)
    assert int(select_optimizer.iterations) == 2
    assert not np.allclose(tf_path, 1.0)


def test_config_round_trip_and_bad_arguments():
    optimizer = GradientAccumulation(keras.optimizers.SGD(0.5), steps=3)
    revived = keras.optimizers.deserialize(
        keras.optimizers.serialize(optimizer)
    )
    assert isinstance(revived, GradientAccumulation)
    assert revived.steps == 3
    assert float(revived.learning_rate) == 0.5
    with pytest.raises(ValueError, match="steps"):
        GradientAccumulation(keras.optimizers.SGD(), steps=0)
    with pytest.raises(TypeError, match="optimizer"):
        GradientAccumulation("sgd", steps=2)
    with pytest.raises(ValueError, match="LossScaleOptimizer"):
        GradientAccumulation(
            keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD()), 2
        )
    with pytest.raises(ValueError, match="gradient_accumulation_steps"):
        GradientAccumulation(
            keras.optimizers.SGD(gradient_accumulation_steps=2), 2
        )
