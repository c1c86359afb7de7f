"""keras_llm's models quantized with Keras' `Model.quantize` save and load:
their configs carry a `DTypePolicyMap` of the quantized sublayers."""

import keras
import numpy as np
import pytest

from keras_llm.models import BERT
from keras_llm.models import GPT
from keras_llm.models import EncoderDecoder

SIZES = dict(num_heads=2, hidden_dim=32, intermediate_dim=64)


def _cases():
    tokens = np.random.default_rng(0).integers(1, 50, (2, 12)).astype("int32")
    return {
        "gpt": (
            lambda: GPT(
                vocabulary_size=50,
                num_layers=2,
                max_sequence_length=16,
                **SIZES,
            ),
            tokens,
        ),
        "bert": (
            lambda: BERT(
                vocabulary_size=50,
                num_layers=2,
                max_sequence_length=16,
                **SIZES,
            ),
            tokens,
        ),
        "encoder_decoder": (
            lambda: EncoderDecoder(
                vocabulary_size=50,
                num_encoder_layers=1,
                num_decoder_layers=1,
                max_sequence_length=16,
                **SIZES,
            ),
            {"encoder_token_ids": tokens, "decoder_token_ids": tokens},
        ),
    }


@pytest.mark.parametrize("mode", ["int8", "int4"])
@pytest.mark.parametrize("name", ["gpt", "bert", "encoder_decoder"])
def test_quantized_model_saves_and_loads(name, mode, tmp_path):
    build, x = _cases()[name]
    model = build()
    float_out = keras.ops.convert_to_numpy(model(x))
    model.quantize(mode)
    quantized_out = keras.ops.convert_to_numpy(model(x))
    assert not np.array_equal(quantized_out, float_out)  # really quantized
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert type(loaded) is type(model)
    modes = {
        layer.path: layer.quantization_mode
        for layer in loaded._flatten_layers()
        if layer.quantization_mode is not None
    }
    assert modes and set(modes.values()) == {mode}
    reloaded = keras.ops.convert_to_numpy(loaded(x))
    # Exact for int4 too: the config keeps each quantized layer's
    # quantization_config (Keras alone would quantize the inputs of the
    # tied int4 ReversibleEmbedding's reverse projection after loading).
    np.testing.assert_array_equal(reloaded, quantized_out)


def test_float_model_config_keeps_its_plain_policy():
    model = GPT(
        vocabulary_size=50,
        num_layers=1,
        max_sequence_length=16,
        dtype="bfloat16",
        **SIZES,
    )
    assert model.get_config()["dtype"]["class_name"] == "DTypePolicy"


def _trained_qat(name):
    from keras_llm.compression import quantize_aware

    build, x = _cases()[name]
    model = build()
    model(x)
    qat = quantize_aware(model, input_quantization="dynamic")
    # Move the output ranges away from their start, as training does.
    qat(x, training=True)
    return qat, x


@pytest.mark.parametrize("name", ["gpt", "bert", "encoder_decoder"])
def test_quantize_aware_model_saves_and_loads(name, tmp_path):
    from keras_llm.compression import QuantizeAwareDense

    qat, x = _trained_qat(name)
    before = keras.ops.convert_to_numpy(qat(x))
    path = tmp_path / "qat.keras"
    qat.save(path)
    loaded = keras.saving.load_model(path)
    kinds = {
        layer.path: type(layer)
        for layer in qat._flatten_layers(include_self=False)
        if isinstance(layer, QuantizeAwareDense)
    }
    assert kinds
    assert {
        layer.path: type(layer)
        for layer in loaded._flatten_layers(include_self=False)
        if isinstance(layer, QuantizeAwareDense)
    } == kinds
    # The learned ranges came back with the weights: same outputs.
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(loaded(x)), before)


@pytest.mark.parametrize("name", ["gpt", "bert", "encoder_decoder"])
def test_converted_qat_model_saves_and_loads(name, tmp_path):
    from keras_llm.compression import convert_qat

    qat, x = _trained_qat(name)
    converted = convert_qat(qat)
    before = keras.ops.convert_to_numpy(converted(x))
    path = tmp_path / "int8.keras"
    converted.save(path)
    loaded = keras.saving.load_model(path)
    ranges = {
        layer.path: (layer.activation.range_min, layer.activation.range_max)
        for layer in loaded._flatten_layers(include_self=False)
        if hasattr(getattr(layer, "activation", None), "range_min")
    }
    assert ranges == {
        layer.path: (layer.activation.range_min, layer.activation.range_max)
        for layer in converted._flatten_layers(include_self=False)
        if hasattr(getattr(layer, "activation", None), "range_min")
    }
    assert ranges
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(loaded(x)), before)
