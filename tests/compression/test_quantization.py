"""Tests for keras_llm.compression.quantization.

tfmot parity runs in a subprocess with TF_USE_LEGACY_KERAS=1 (importing
tf_keras or tfmot here would switch `tf.keras` for the whole test run).
"""

import io
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
from rich.console import Console

from keras_llm.compression import quantization as q

# Runs under TF_USE_LEGACY_KERAS=1: tfmot's default 8-bit QAT of a tf_keras
# copy of the model, calibrated on the same batches; also checks that
# `quantize_aware` delegates to tfmot there.
_TFMOT_SCRIPT = textwrap.dedent(
    """
    import sys
    import numpy as np
    import tf_keras
    import tensorflow_model_optimization as tfmot
    from keras_llm.compression.quantization import quantize_aware

    data = dict(np.load(sys.argv[1]))
    model = tf_keras.Sequential([
        tf_keras.Input((6,)),
        tf_keras.layers.Dense(16, activation="relu"),
        tf_keras.layers.Dense(3),
    ])
    model.set_weights([data["k0"], data["b0"], data["k1"], data["b1"]])
    qat = tfmot.quantization.keras.quantize_model(model)
    for batch in data["batches"]:
        qat(batch, training=True)
    ranges = {w.name: w.numpy() for w in qat.weights}
    calibrated = qat(data["x"], training=False).numpy()
    for w in qat.weights:
        if w.name == "quant_dense/post_activation_max:0":
            w.assign(data["tight1"])
        if w.name == "quant_dense_1/post_activation_min:0":
            w.assign(data["tight2"][0])
        if w.name == "quant_dense_1/post_activation_max:0":
            w.assign(data["tight2"][1])
    tight = qat(data["x"], training=False).numpy()
    delegated = quantize_aware(model)
    assert type(delegated.layers[1]).__name__ == "QuantizeWrapperV2"
    np.savez(
        sys.argv[2],
        calibrated=calibrated,
        tight=tight,
        input_range=[ranges["quantize_layer/quantize_layer_min:0"],
                     ranges["quantize_layer/quantize_layer_max:0"]],
        range1=[ranges["quant_dense/post_activation_min:0"],
                ranges["quant_dense/post_activation_max:0"]],
        range2=[ranges["quant_dense_1/post_activation_min:0"],
                ranges["quant_dense_1/post_activation_max:0"]],
    )
    """
)


def _mlp(width=16, inputs=6, outputs=3):
    return keras.Sequential(
        [
            keras.Input((inputs,)),
            keras.layers.Dense(width, activation="relu"),
            keras.layers.Dense(outputs),
        ]
    )


def _step(quantizer):
    low = float(quantizer.range_min.numpy())
    high = float(quantizer.range_max.numpy())
    return (high - low) / 255


def _data(n=64, features=6, seed=0):
    rng = np.random.default_rng(seed)
    return (1.5 * rng.standard_normal((n, features))).astype("float32")


def test_matches_tfmot_default_8bit_qat(tmp_path):
    model = _mlp()
    x = _data()
    batches = x.reshape(4, 16, 6)
    k0, b0, k1, b1 = model.get_weights()
    hidden = np.maximum(x @ k0 + b0, 0)
    logits = hidden @ k1 + b1
    tight1 = np.float32(hidden.max())
    tight2 = np.array([logits.min(), logits.max()], "float32")
    np.savez(
        tmp_path / "in.npz",
        k0=k0, b0=b0, k1=k1, b1=b1, x=x, batches=batches,
        tight1=tight1, tight2=tight2,
    )  # fmt: skip
    script = tmp_path / "tfmot_qat.py"
    script.write_text(_TFMOT_SCRIPT)
    env = dict(os.environ, TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="3")
    root = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    result = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "in.npz"),
         str(tmp_path / "out.npz")],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    ref = np.load(tmp_path / "out.npz")

    # tfmot's Dense default: per-tensor kernels.
    qat = q.quantize_aware(model, per_channel=False)
    first, second = qat.layers
    assert first.quantize_inputs and not second.quantize_inputs
    for batch in batches:
        qat(batch, training=True)
    ours = {
        "input_range": first.input_quantizer,
        "range1": first.output_quantizer,
        "range2": second.output_quantizer,
    }
    for key, quantizer in ours.items():
        got = [quantizer.range_min.numpy(), quantizer.range_max.numpy()]
        np.testing.assert_allclose(got, ref[key], rtol=1e-6, atol=1e-6)
    out = np.asarray(qat(x, training=False))
    step = _step(second.output_quantizer)
    assert np.abs(out - ref["calibrated"]).max() <= step * 1.001

    # Ranges fitted to the data: a fine output grid, still within a step.
    first.output_quantizer.range_max.assign(tight1)
    second.output_quantizer.range_min.assign(tight2[0])
    second.output_quantizer.range_max.assign(tight2[1])
    out = np.asarray(qat(x, training=False))
    step = _step(second.output_quantizer)
    assert step < 0.05
    assert np.abs(out - ref["tight"]).max() <= step * 1.001
    # The quantization is not a no-op: the float model is off the grid.
    assert np.abs(out - logits).max() > 0.1 * step


def test_trains_in_fit_saves_and_loads(tmp_path):
    inputs = keras.Input((6,))
    hidden = keras.layers.Dense(16, activation="relu")(inputs)
    outputs = keras.layers.EinsumDense("ab,bc->ac", 3, bias_axes="c")(hidden)
    model = keras.Model(inputs, outputs)
    x = _data()
    y = (x[:, :3] * 0.5).astype("float32")
    qat = q.quantize_aware(model, initial_range=None)
    assert [type(layer).__name__ for layer in qat.layers[1:]] == [
        "QuantizeAwareDense",
        "QuantizeAwareEinsumDense",
    ]
    qat.compile(optimizer=keras.optimizers.Adam(0.01), loss="mse")
    history = qat.fit(x, y, epochs=4, batch_size=16, verbose=0)
    assert history.history["loss"][-1] < history.history["loss"][0]
    kernel = qat.layers[1].kernel.numpy()
    assert not np.allclose(kernel, model.layers[1].kernel.numpy())
    quantizer = qat.layers[2].output_quantizer
    assert quantizer.batches_seen.numpy() == 16
    # The original float model is untouched.
    assert type(model.layers[1]) is keras.layers.Dense

    path = tmp_path / "qat.keras"
    qat.save(path)
    loaded = keras.models.load_model(path)
    assert type(loaded.layers[2]).__name__ == "QuantizeAwareEinsumDense"
    np.testing.assert_array_equal(np.asarray(loaded(x)), np.asarray(qat(x)))
    assert loaded.layers[2].output_quantizer.range_max.numpy() == (
        quantizer.range_max.numpy()
    )


def test_per_channel_kernel_grid():
    model = _mlp()
    qat = q.quantize_aware(model)
    layer = qat.layers[0]
    kernel = layer.kernel.numpy()
    folded = np.asarray(layer.quantized_kernel())
    scale = np.abs(kernel).max(axis=0) / 127
    levels = folded / scale
    np.testing.assert_allclose(levels, np.round(levels), atol=1e-3)
    assert np.abs(np.round(levels)).max() == 127
    assert np.abs(folded - kernel).max() <= scale.max() / 2 + 1e-6


@pytest.mark.parametrize("input_quantization", ["dynamic", "static"])
def test_converted_int8_model_agrees_with_qat_model(input_quantization):
    model = _mlp(width=32)
    x = _data(seed=1)
    qat = q.quantize_aware(
        model, initial_range=None, input_quantization=input_quantization
    )
    for batch in x.reshape(4, 16, 6):
        qat(batch, training=True)
    converted = q.convert_qat(qat)
    layers = converted.layers
    assert [layer.quantization_mode for layer in layers] == ["int8", "int8"]
    assert "keras_llm" not in type(layers[0]).__module__
    # Keras' int8 kernel holds the QAT grid exactly.
    qat_grid = np.asarray(qat.layers[0].quantized_kernel())
    scale = layers[0].kernel_scale.numpy()
    np.testing.assert_allclose(
        layers[0]._kernel.numpy() / scale, qat_grid, rtol=1e-5, atol=1e-6
    )
    expected = np.asarray(qat(x, training=False))
    got = np.asarray(converted(x))
    step = _step(qat.layers[-1].output_quantizer)
    error = np.abs(got - expected).max() / step
    if input_quantization == "dynamic":
        # Same arithmetic as Keras' int8 layers: within one output step.
        assert error <= 1.001
    else:
        # Static input ranges differ from Keras' dynamic per-row inputs.
        assert error <= 4


def test_nested_gpt_layers_train_and_convert():
    from keras_llm.models.gpt import GPT

    model = GPT(
        vocabulary_size=11,
        num_layers=1,
        num_heads=2,
        hidden_dim=8,
        max_sequence_length=6,
    )
    tokens = np.random.default_rng(0).integers(0, 11, (4, 6))
    model(tokens)
    qat = q.quantize_aware(model, input_quantization="dynamic")
    qat_layers = [
        layer
        for layer in qat._flatten_layers(include_self=False)
        if isinstance(layer, q.QuantizeAwareDense)
    ]
    assert len(qat_layers) >= 4  # attention projections and feed-forward
    qat.compile(
        optimizer="adam",
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    qat.fit(tokens, tokens, epochs=1, verbose=0)
    assert all(
        layer.output_quantizer.batches_seen.numpy() == 1 for layer in qat_layers
    )
    float_logits = np.asarray(model(tokens))
    qat_logits = np.asarray(qat(tokens))
    assert not np.array_equal(float_logits, qat_logits)
    assert type(qat) is GPT
    converted = q.convert_qat(qat)
    modes = {
        layer.quantization_mode
        for layer in converted._flatten_layers(include_self=False)
        if type(layer) is keras.layers.Dense
    }
    assert modes == {"int8"}
    # Keras' int8 layers do what the dynamic-input QAT layers simulated.
    np.testing.assert_allclose(
        np.asarray(converted(tokens)), qat_logits, atol=1e-4
    )


def _run_tflite(flatbuffer, x):
    import tensorflow as tf

    interpreter = tf.lite.Interpreter(model_content=flatbuffer)
    interpreter.allocate_tensors()
    inp = interpreter.get_input_details()[0]
    out = interpreter.get_output_details()[0]
    results = []
    for row in x:
        interpreter.set_tensor(inp["index"], row[None])
        interpreter.invoke()
        results.append(interpreter.get_tensor(out["index"])[0])
    types = {d["dtype"] for d in interpreter.get_tensor_details()}
    return np.stack(results), types


def test_tflite_dynamic_and_full_integer():
    # Big enough for TFLite to quantize a kernel (>= 1024 weights).
    model = _mlp(width=128, inputs=16)
    x = _data(n=32, features=16, seed=2)
    expected = np.asarray(model(x))
    spread = np.abs(expected).max()

    dynamic = q.to_tflite(model, mode="dynamic")
    got, types = _run_tflite(dynamic, x)
    assert np.int8 in types
    assert np.abs(got - expected).max() < 0.05 * spread

    # TFLite takes per-tensor fake-quantized Dense kernels (tfmot's scheme).
    qat = q.quantize_aware(model, initial_range=None, per_channel=False)
    for batch in x.reshape(2, 16, 16):
        qat(batch, training=True)
    full = q.to_tflite(qat, mode="int8", representative_dataset=x)
    got, types = _run_tflite(full, x)
    assert np.int8 in types
    qat_out = np.asarray(qat(x, training=False))
    step = _step(qat.layers[-1].output_quantizer)
    assert np.abs(got - qat_out).max() <= 3 * step
    assert np.abs(got - expected).mean() < 0.02 * spread


def test_quantize_weights_report():
    model = keras.Sequential(
        [
            keras.Input((256,)),
            keras.layers.Dense(256, activation="relu"),
            keras.layers.Dense(256),
        ]
    )
    model.compile(loss="mse")
    x = _data(n=64, features=256)
    y = np.asarray(model(x)) + 0.1
    report = q.quantize_weights(model, "int8", validation_data=(x, y))
    assert report.weight_ratio <= 0.27
    assert report.file_bytes_after < 0.5 * report.file_bytes_before
    assert report.loss_before == pytest.approx(0.01, rel=1e-3)
    assert report.loss_after != report.loss_before
    assert abs(report.loss_change) < 0.5
    assert report.model.layers[0].quantization_mode == "int8"
    assert model.layers[0].quantization_mode is None
    int4 = q.quantize_weights(model, "int4")
    assert int4.weight_bytes_after < report.weight_bytes_after
    assert int4.loss_before is None
    console = Console(file=io.StringIO(), width=100)
    report.show(console)
    text = console.file.getvalue()
    assert "weight bytes" in text and "validation loss" in text


def test_bad_input():
    model = _mlp()
    with pytest.raises(ValueError, match="weight_bits=3"):
        q.quantize_aware(model, weight_bits=3)
    with pytest.raises(ValueError, match="activation_bits=4"):
        q.quantize_aware(model, activation_bits=4)
    conv = keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(2, 3, name="my_conv"),
            keras.layers.Flatten(),
            keras.layers.Dense(2),
        ]
    )
    with pytest.raises(ValueError, match="'my_conv' \\(Conv2D\\)"):
        q.quantize_aware(conv)
    skipped = q.quantize_aware(conv, unsupported="skip")
    assert type(skipped.layers[0]) is keras.layers.Conv2D
    assert isinstance(skipped.layers[-1], q.QuantizeAwareDense)
    with pytest.raises(ValueError, match="no quantize-aware layer"):
        q.convert_qat(model)
    with pytest.raises(ValueError, match="mode='int2'"):
        q.quantize_weights(model, "int2")
    with pytest.raises(ValueError, match="representative_dataset"):
        q.to_tflite(model, mode="int8")
    per_channel = q.quantize_aware(model)
    with pytest.raises(ValueError, match="per_channel=False"):
        q.to_tflite(per_channel, mode="int8", representative_dataset=_data())
    with pytest.raises(ValueError, match="input_quantization='x'"):
        q.quantize_aware(model, input_quantization="x")


def test_keras_3_model_is_not_handed_to_tfmot_when_the_variable_is_set(
    monkeypatch,
):
    # Importing tfmot (e.g. for a pruning schedule) sets this variable for
    # the whole process; a Keras 3 model must still get our QAT.
    monkeypatch.setenv("TF_USE_LEGACY_KERAS", "1")
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    aware = q.quantize_aware(model)
    assert isinstance(aware, keras.Model)
    assert type(aware.layers[0]).__name__ == "QuantizeAwareDense"
