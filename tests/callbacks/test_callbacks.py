import os

import keras
import numpy as np
import pytest

from keras_llm.callbacks import LossCurve
from keras_llm.callbacks import SampleGenerator
from keras_llm.callbacks import ThroughputMeter
from keras_llm.callbacks import flops_per_token
from keras_llm.data import CharacterTokenizer
from keras_llm.models import GPT


def _model_and_data(vocab=12, length=8):
    model = GPT(
        vocabulary_size=vocab,
        num_layers=1,
        num_heads=2,
        hidden_dim=8,
        max_sequence_length=32,
    )
    model.compile(
        optimizer="adam",
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    x = (
        np.random.default_rng(0)
        .integers(0, vocab, (16, length))
        .astype("int32")
    )
    return model, x


def test_flops_per_token_formula():
    model, _ = _model_and_data()
    n = model.count_params() - 32 * 8  # without position embeddings
    assert flops_per_token(model, 8) == 6 * n + 12 * 1 * 8 * 8


def test_throughput_meter_logs_tokens_per_second_and_mfu():
    model, x = _model_and_data()
    meter = ThroughputMeter(
        tokens_per_step=4 * 8,
        sequence_length=8,
        peak_flops=1e12,
        warmup_steps=1,
    )
    history = model.fit(
        x, x, batch_size=4, epochs=2, callbacks=[meter], verbose=0
    )
    for key in ("tokens_per_second", "tflops", "mfu"):
        assert key in history.history
    tps = history.history["tokens_per_second"][-1]
    assert tps > 0 and meter.tokens_per_second == tps
    expected_mfu = tps * flops_per_token(model, 8) / 1e12
    assert history.history["mfu"][-1] == pytest.approx(expected_mfu)
    with pytest.raises(ValueError, match="sequence_length"):
        ThroughputMeter(tokens_per_step=8)


def test_loss_curve_writes_png(tmp_path):
    model, x = _model_and_data()
    path = os.path.join(tmp_path, "curves", "loss.png")
    curve = LossCurve(path)
    history = model.fit(
        x,
        x,
        batch_size=4,
        epochs=2,
        validation_split=0.25,
        callbacks=[curve],
        verbose=0,
    )
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert len(curve.train) == 6 and len(curve.validation) == 2
    # The per-batch losses recovered from Keras' running means average back
    # to each epoch's logged loss.
    last_epoch = [loss for _, loss in curve.train[3:]]
    assert np.mean(last_epoch) == pytest.approx(
        history.history["loss"][-1], rel=1e-5
    )


def test_sample_generator_prints_every_n_steps():
    tokenizer = CharacterTokenizer.from_texts(["abcdefghijk"])
    model, x = _model_and_data(vocab=tokenizer.vocabulary_size())
    printed = []
    sampler = SampleGenerator(
        tokenizer,
        prompt="ab",
        every_n_steps=2,
        max_length=10,
        print_fn=printed.append,
    )
    model.fit(x, x, batch_size=4, epochs=1, callbacks=[sampler], verbose=0)
    assert len(printed) == 2 and "[step 2]" in printed[0]
    assert all(text.startswith("ab") for _, text in sampler.samples)
