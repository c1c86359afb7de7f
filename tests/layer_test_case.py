"""Shared checks that every keras_llm layer test runs (after keras-hub's
`run_layer_test`): config round trip, eager and symbolic calls with equal
shapes, `.keras` save/load with equal outputs, one `fit` step that changes
the weights, mixed_float16 / mixed_bfloat16 dtype checks, and a `fit` step
under `tf.distribute.MirroredStrategy` on two logical CPU devices.
"""

import functools
import os
import tempfile

import keras
import numpy as np
import tensorflow as tf


@functools.cache
def shared_strategy():
    """One MirroredStrategy over 2 logical CPUs for the whole test session.

    A new strategy per test reuses collective instance keys of the previous
    one and TF then mixes up their all-reduces, so tests share this one.
    """
    devices = [d.name for d in tf.config.list_logical_devices("CPU")]
    assert len(devices) >= 2, "tests/conftest.py did not create 2 CPU devices"
    return tf.distribute.MirroredStrategy(devices[:2])


def _as_inputs(input_data):
    """Normalises inputs to (name of first arg or None, dict of arrays)."""
    if isinstance(input_data, dict):
        return dict(input_data)
    return {None: input_data}


def _call(layer, inputs, call_kwargs, training=None):
    args = dict(inputs)
    first = args.pop(None, None)
    kwargs = dict(call_kwargs or {})
    if training is not None:
        kwargs["training"] = training
    if first is not None:
        return layer(first, **args, **kwargs)
    return layer(**args, **kwargs)


def _symbolic_inputs(inputs):
    sym = {}
    for name, value in inputs.items():
        value = np.asarray(value)
        sym[name] = keras.Input(
            shape=value.shape[1:],
            dtype=str(value.dtype),
            name=name or "inputs",
        )
    return sym


def _model_inputs(sym):
    """Keras functional model inputs: a dict keyed by Input names."""
    return {t.name: t for t in sym.values()}


def _feed(inputs):
    return {(name or "inputs"): np.asarray(v) for name, v in inputs.items()}


def _fresh(init_kwargs):
    """Copies constructor arguments, cloning layer instances among them, so
    each check builds its own unbuilt layer (inside a strategy scope too)."""
    return {
        k: v.__class__.from_config(v.get_config())
        if isinstance(v, keras.layers.Layer)
        else v
        for k, v in init_kwargs.items()
    }


def _wrap_model(layer_cls, init_kwargs, inputs, call_kwargs, dtype=None):
    kwargs = _fresh(init_kwargs)
    if dtype is not None:
        kwargs["dtype"] = dtype
    layer = layer_cls(**kwargs)
    sym = _symbolic_inputs(inputs)
    out = _call(layer, sym, call_kwargs)
    if isinstance(out, (tuple, list)):
        out = out[0]
    model = keras.Model(_model_inputs(sym), out)
    return model, layer


def _float_output(out):
    return out[0] if isinstance(out, (tuple, list)) else out


def run_layer_test(
    layer_cls,
    init_kwargs,
    input_data,
    call_kwargs=None,
    expected_output_shape=None,
    expected_num_trainable_weights=None,
    run_training=True,
    run_saving=True,
    run_mixed_precision=True,
    run_distributed=True,
    float32_output=False,
    atol=1e-6,
):
    """Runs the standard battery of checks on one layer configuration.

    Args:
        layer_cls: the layer class.
        init_kwargs: constructor arguments.
        input_data: an array for the first call argument, or a dict mapping
            call-argument names to arrays (`None` for the first positional).
        call_kwargs: extra non-tensor call arguments (e.g. flags).
        expected_output_shape: the eager output shape to assert.
        expected_num_trainable_weights: number of trainable variables.
        run_training: run one `fit` step and check the weights moved.
        run_saving: check a `.keras` round trip gives equal outputs.
        run_mixed_precision: check mixed_float16 and mixed_bfloat16.
        run_distributed: run one `fit` step under MirroredStrategy.
        float32_output: the layer's output stays float32 under mixed
            precision (logits).
        atol: tolerance of the save/load comparison.
    """
    inputs = _as_inputs(input_data)

    # --- Config round trip ---
    layer = layer_cls(**_fresh(init_kwargs))
    config = layer.get_config()
    for key in init_kwargs:
        assert key in config, f"{layer_cls.__name__}.get_config lacks {key!r}"
    revived = layer_cls.from_config(config)
    assert revived.get_config() == config
    serialized = keras.saving.serialize_keras_object(layer)
    revived = keras.saving.deserialize_keras_object(serialized)
    assert type(revived) is layer_cls
    assert revived.get_config() == config

    # --- Eager call ---
    eager_out = _float_output(_call(layer, inputs, call_kwargs))
    eager_np = keras.ops.convert_to_numpy(eager_out)
    assert np.all(np.isfinite(eager_np)), "eager output is not finite"
    if expected_output_shape is not None:
        assert tuple(eager_np.shape) == tuple(expected_output_shape), (
            f"output shape {eager_np.shape} != {expected_output_shape}"
        )
    if expected_num_trainable_weights is not None:
        assert len(layer.trainable_weights) == expected_num_trainable_weights
    # The config of a built layer still round-trips.
    assert layer_cls.from_config(layer.get_config()).get_config() == (
        layer.get_config()
    )

    # --- Symbolic call ---
    sym = _symbolic_inputs(inputs)
    sym_out = _float_output(
        _call(layer_cls(**_fresh(init_kwargs)), sym, call_kwargs)
    )
    assert tuple(sym_out.shape[1:]) == tuple(eager_np.shape[1:]), (
        f"symbolic shape {sym_out.shape} != eager shape {eager_np.shape}"
    )

    # --- Save / load ---
    if run_saving:
        model, _ = _wrap_model(layer_cls, init_kwargs, inputs, call_kwargs)
        before = model.predict(_feed(inputs), verbose=0)
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "model.keras")
            model.save(path)
            loaded = keras.saving.load_model(path)
        after = loaded.predict(_feed(inputs), verbose=0)
        np.testing.assert_allclose(before, after, atol=atol)
        inner = [lyr for lyr in loaded.layers if isinstance(lyr, layer_cls)]
        assert inner, "the loaded model lost the layer"

    # --- One fit step ---
    if run_training:
        model, inner = _wrap_model(layer_cls, init_kwargs, inputs, call_kwargs)
        target = np.random.default_rng(0).normal(size=eager_np.shape)
        model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
        weights = [w.numpy().copy() for w in inner.trainable_weights]
        history = model.fit(
            _feed(inputs), target.astype("float32"), epochs=1, verbose=0
        )
        assert np.isfinite(history.history["loss"][0])
        moved = [
            not np.allclose(w0, w.numpy())
            for w0, w in zip(weights, inner.trainable_weights)
        ]
        assert any(moved), "one fit step left every weight unchanged"

    # --- Mixed precision ---
    if run_mixed_precision:
        for policy, compute in (
            ("mixed_float16", "float16"),
            ("mixed_bfloat16", "bfloat16"),
        ):
            mp_layer = layer_cls(**_fresh(init_kwargs), dtype=policy)
            out = _float_output(_call(mp_layer, inputs, call_kwargs))
            expected = "float32" if float32_output else compute
            assert keras.backend.standardize_dtype(out.dtype) == expected, (
                f"{policy}: output dtype {out.dtype}, expected {expected}"
            )
            for w in mp_layer.weights:
                if w.trainable:
                    assert w.dtype == "float32", (
                        f"{policy}: variable {w.path} is {w.dtype}"
                    )
            assert np.all(
                np.isfinite(keras.ops.convert_to_numpy(out).astype("float32"))
            ), f"{policy}: output is not finite"

    # --- tf.distribute ---
    if run_distributed and keras.backend.backend() == "tensorflow":
        strategy = shared_strategy()
        with strategy.scope():
            model, _ = _wrap_model(layer_cls, init_kwargs, inputs, call_kwargs)
            model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
        target = np.zeros(eager_np.shape, "float32")
        batch = len(next(iter(inputs.values())))
        history = model.fit(
            _feed(inputs), target, batch_size=max(batch, 2), epochs=1, verbose=0
        )
        assert np.isfinite(history.history["loss"][0])
