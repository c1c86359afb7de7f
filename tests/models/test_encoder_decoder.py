import os

import keras
import keras_hub
import numpy as np
import pytest

from keras_llm.models import EncoderDecoder
from keras_llm.models.presets import ENCODER_DECODER_PRESETS

TINY = dict(
    vocabulary_size=16,
    num_encoder_layers=2,
    num_decoder_layers=2,
    num_heads=2,
    hidden_dim=16,
    max_sequence_length=10,
    max_target_length=12,
)
# Every option away from its default at once.
VARIANT = dict(
    position_embedding="rotary",
    normalization="post",
    activation="swiglu",
    tie_embeddings=False,
    target_vocabulary_size=11,
    num_key_value_heads=1,
    use_bias=False,
    remat=True,
)
START, END = 1, 2
LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def _batch(batch=3, source_length=7, target_length=6, seed=0, vocab=16):
    rng = np.random.default_rng(seed)
    source = rng.integers(3, 16, (batch, source_length)).astype("int32")
    source[0, 5:] = 0  # padding
    source[1, 3:] = 0
    target = rng.integers(3, vocab, (batch, target_length)).astype("int32")
    target[:, 0] = START
    return {"encoder_token_ids": source, "decoder_token_ids": target}


def _spread(model, seed=1, scale=0.5):
    """Larger random weights (layer norms kept), so greedy decoding of an
    untrained model depends on the source and varies along the output."""
    rng = np.random.default_rng(seed)
    for weight in model.weights:
        if "norm" not in weight.path:
            value = rng.normal(0.0, scale, weight.shape)
            weight.assign(value.astype(weight.dtype))
    return model


def _greedy_without_cache(model, sources, max_length):
    """Reference decoding: re-runs the whole model on the growing prefix
    (the rows of `sources`, padded with 0, decode side by side)."""
    sources = np.asarray(sources, "int32")
    sequences = np.full((len(sources), 1), START, "int32")
    while sequences.shape[1] < max_length:
        logits = model(
            {"encoder_token_ids": sources, "decoder_token_ids": sequences}
        )
        next_ids = np.argmax(logits[:, -1], axis=-1).astype("int32")
        sequences = np.concatenate([sequences, next_ids[:, None]], axis=1)
    return sequences


def test_forward_shape_float32_logits_and_default_masks():
    model = EncoderDecoder(**TINY)
    x = _batch()
    logits = model(x)
    assert logits.shape == (3, 6, 16)
    assert keras.backend.standardize_dtype(logits.dtype) == "float32"
    explicit = dict(
        x,
        encoder_padding_mask=x["encoder_token_ids"] != 0,
        decoder_padding_mask=np.ones((3, 6), bool),
    )
    np.testing.assert_array_equal(model(explicit), logits)
    np.testing.assert_array_equal(model.predict(x, verbose=0), logits)
    with pytest.raises(TypeError, match="dict"):
        model(x["encoder_token_ids"])
    with pytest.raises(ValueError, match="decoder_token_ids"):
        model({"encoder_token_ids": x["encoder_token_ids"]})


def test_decoder_is_causal():
    model = EncoderDecoder(**TINY)
    x = _batch()
    changed = dict(x, decoder_token_ids=x["decoder_token_ids"].copy())
    changed["decoder_token_ids"][:, 3:] = (
        changed["decoder_token_ids"][:, 3:] + 1
    ) % 16
    before, after = model(x), model(changed)
    np.testing.assert_allclose(before[:, :3], after[:, :3], atol=1e-6)
    assert np.abs(before[:, 3:] - after[:, 3:]).max() > 1e-4


def test_encoder_padding_is_ignored():
    model = EncoderDecoder(**TINY)
    x = _batch()
    mask = x["encoder_token_ids"] != 0
    noisy = x["encoder_token_ids"].copy()
    noisy[~mask] = 7  # other tokens where the mask says padding
    reference = model(x)
    np.testing.assert_allclose(
        model(dict(x, encoder_token_ids=noisy, encoder_padding_mask=mask)),
        reference,
        atol=1e-6,
    )
    # Without a mask those tokens count: the check above can fail.
    unmasked = model(
        dict(
            x, encoder_token_ids=noisy, encoder_padding_mask=np.ones_like(mask)
        )
    )
    assert np.abs(unmasked - reference).max() > 1e-4
    # More padding columns (default mask: id 0 is padding) change nothing.
    longer = np.pad(x["encoder_token_ids"], ((0, 0), (0, 3)))
    np.testing.assert_allclose(
        model(dict(x, encoder_token_ids=longer)), reference, atol=1e-6
    )


def test_cross_attention_reads_the_source():
    model = EncoderDecoder(**TINY)
    x = _batch()
    other = dict(x, encoder_token_ids=x["encoder_token_ids"].copy())
    first = other["encoder_token_ids"][:, 0]
    other["encoder_token_ids"][:, 0] = (first - 3 + 1) % 13 + 3
    before, after = model(x), model(other)
    # Every position moves, the first one too, which sees no target token
    # but the start token: the source reaches it through cross-attention.
    assert (np.abs(before - after).max(axis=-1) > 1e-4).all()


@pytest.mark.parametrize("variant", [{}, VARIANT], ids=["default", "variant"])
def test_cached_generation_equals_uncached_greedy(variant):
    model = _spread(EncoderDecoder(**TINY, **variant))
    sources = [[3, 4, 5, 6, 7], [8, 9, 10], [11, 12, 13, 14, 15, 4, 5]]
    out = model.generate(sources, max_length=10, start_token_id=START)
    assert out.shape == (3, 10)
    # Not a degenerate model: the rows differ and hold several tokens.
    assert len({tuple(row) for row in out}) == 3
    assert len(np.unique(out[:, 1:])) >= 3
    padded = np.zeros((3, 7), "int32")
    for i, source in enumerate(sources):
        padded[i, : len(source)] = source
    np.testing.assert_array_equal(out, _greedy_without_cache(model, padded, 10))
    # An end token: the row stops there and the rest is padding.
    end = int(out[0, 4])
    first = 1 + int(np.argmax(out[0, 1:] == end))
    ended = model.generate(
        sources, max_length=10, start_token_id=START, end_token_id=end
    )
    np.testing.assert_array_equal(ended[0, : first + 1], out[0, : first + 1])
    assert (ended[0, first + 1 :] == 0).all()
    # The same sources as an array (padding 0) or a dict with a mask.
    np.testing.assert_array_equal(
        model.generate(padded, max_length=10, start_token_id=START), out
    )
    noisy = np.where(padded == 0, 9, padded)
    as_dict = {"encoder_token_ids": noisy, "encoder_padding_mask": padded != 0}
    np.testing.assert_array_equal(
        model.generate(as_dict, max_length=10, start_token_id=START), out
    )


def test_samplers_beam_rows_and_seeds():
    model = _spread(EncoderDecoder(**TINY))
    sources = [[3, 4, 5, 6], [7, 8, 9, 10]]
    beam = keras_hub.samplers.BeamSampler(num_beams=3)
    both = model.generate(sources, 8, start_token_id=START, sampler=beam)
    # Each row's beams read that row's encoder outputs.
    for i, source in enumerate(sources):
        alone = model.generate([source], 8, start_token_id=START, sampler=beam)
        np.testing.assert_array_equal(both[i], alone[0])
    assert (both[:, 0] == START).all()
    a = model.generate(
        sources, 8, start_token_id=START, sampler="top_k", seed=4
    )
    b = model.generate(
        sources, 8, start_token_id=START, sampler="top_k", seed=4
    )
    np.testing.assert_array_equal(a, b)
    assert ((a >= 0) & (a < 16)).all()
    assert len(model._generate_functions) == 2


def test_save_load_identical_outputs(tmp_path):
    for i, variant in enumerate(({}, VARIANT)):
        model = EncoderDecoder(**TINY, **variant)
        x = _batch(vocab=model.target_vocabulary_size or 16)
        path = os.path.join(tmp_path, f"model_{i}.keras")
        model.save(path)
        loaded = keras.saving.load_model(path)
        assert isinstance(loaded, EncoderDecoder)
        assert loaded.get_config() == model.get_config()
        np.testing.assert_array_equal(model(x), loaded(x))
    assert all(block.remat for block in loaded.decoder_blocks)
    assert loaded.encoder_token_embedding is not None


def test_embedding_sharing():
    v, d = TINY["vocabulary_size"], TINY["hidden_dim"]
    tied = EncoderDecoder(**TINY)
    untied = EncoderDecoder(**TINY, tie_embeddings=False)
    assert tied.encoder_token_embedding is None
    # Untied: an encoder table, a decoder table and an output projection.
    assert untied.count_params() - tied.count_params() == 2 * v * d
    separate = EncoderDecoder(**TINY, target_vocabulary_size=5)
    assert separate.encoder_token_embedding.input_dim == v
    assert separate.decoder_token_embedding.tie_weights
    assert separate(_batch(vocab=5)).shape == (3, 6, 5)


def test_mixed_precision():
    x = _batch()
    for policy in ("mixed_float16", "mixed_bfloat16"):
        keras.config.set_dtype_policy(policy)
        model = EncoderDecoder(**TINY)
        logits = model(x)
        assert keras.backend.standardize_dtype(logits.dtype) == "float32"
        assert np.isfinite(logits).all()
        assert all(w.dtype == "float32" for w in model.trainable_weights)
        assert model.decoder_blocks[0].compute_dtype == policy.split("_")[1]
    # The cache follows the compute dtype (bfloat16 here).
    assert model._empty_cache(1, 4).dtype == "bfloat16"
    out = model.generate([[3, 4], [5]], max_length=5, start_token_id=START)
    assert out.shape == (2, 5)


def test_fit_under_mirrored_strategy(mirrored_strategy):
    with mirrored_strategy.scope():
        model = EncoderDecoder(**TINY)
        model.compile(optimizer=keras.optimizers.Adam(1e-2), loss=LOSS)
    x = _batch(batch=8)
    history = model.fit(
        x, x["decoder_token_ids"], batch_size=4, epochs=2, verbose=0
    )
    loss = history.history["loss"]
    assert np.isfinite(loss).all() and loss[-1] < loss[0]


def _reversal_pairs(n, rng, vocab=13):
    """Digit strings (ids 3..12, length 2-5) and their reversal, framed by
    START ... END; id 0 pads."""
    source = np.zeros((n, 5), "int32")
    target = np.zeros((n, 7), "int32")
    for i in range(n):
        k = rng.integers(2, 6)
        digits = rng.integers(3, vocab, k)
        source[i, :k] = digits
        target[i, 0] = START
        target[i, 1 : k + 1] = digits[::-1]
        target[i, k + 1] = END
    return source, target


def test_learns_to_reverse_and_generates_held_out_targets():
    train_source, train_target = _reversal_pairs(2000, np.random.default_rng(0))
    test_source, test_target = _reversal_pairs(64, np.random.default_rng(1))
    seen = {tuple(row) for row in train_source}
    unseen = [tuple(row) not in seen for row in test_source]
    assert sum(unseen) >= 30
    model = EncoderDecoder(
        vocabulary_size=13,
        num_encoder_layers=1,
        num_decoder_layers=1,
        num_heads=4,
        hidden_dim=64,
        intermediate_dim=128,
        max_sequence_length=5,
        max_target_length=7,
    )
    steps = 5 * 2000 // 64
    schedule = keras.optimizers.schedules.CosineDecay(
        0.0, steps, alpha=0.1, warmup_target=5e-3, warmup_steps=20
    )
    model.compile(
        optimizer=keras.optimizers.Adam(schedule, clipnorm=1.0),
        loss=keras.losses.SparseCategoricalCrossentropy(
            from_logits=True, ignore_class=0
        ),
    )
    model.fit(
        {
            "encoder_token_ids": train_source,
            "decoder_token_ids": train_target[:, :-1],
        },
        train_target[:, 1:],
        batch_size=64,
        epochs=5,
        verbose=0,
    )
    logits = model.predict(
        {
            "encoder_token_ids": test_source,
            "decoder_token_ids": test_target[:, :-1],
        },
        verbose=0,
    )
    labels = test_target[:, 1:]
    real = labels != 0
    token_accuracy = (logits.argmax(-1) == labels)[real].mean()
    assert token_accuracy > 0.97
    out = model.generate(
        test_source, max_length=7, start_token_id=START, end_token_id=END
    )
    exact = (out == test_target).all(axis=1)
    assert exact[unseen].mean() >= 0.9
    # The cached decoding of a trained model equals the full recompute
    # (up to each row's end token: after it `generate` writes padding).
    reference = _greedy_without_cache(model, test_source, 7)
    for row, expected in zip(out, reference):
        stop = list(expected).index(END) if END in expected else 6
        np.testing.assert_array_equal(row[: stop + 1], expected[: stop + 1])


@pytest.mark.parametrize(
    "override, message",
    [
        (dict(vocabulary_size=0), "vocabulary_size"),
        (dict(num_decoder_layers=-1), "num_decoder_layers"),
        (dict(hidden_dim=15), "divisible"),
        (dict(position_embedding="sinusoidal"), "position_embedding"),
        (dict(normalization="mid"), "normalization"),
        (dict(pad_token_id=16), "pad_token_id"),
        (dict(dropout=1.5), "dropout"),
    ],
)
def test_bad_arguments(override, message):
    with pytest.raises(ValueError, match=message):
        EncoderDecoder(**dict(TINY, **override))


def test_bad_generate_arguments():
    model = EncoderDecoder(**TINY)
    with pytest.raises(ValueError, match="max_target_length"):
        model.generate([[3]], max_length=13, start_token_id=START)
    with pytest.raises(ValueError, match="max_length"):
        model.generate([[3]], max_length=1, start_token_id=START)
    with pytest.raises(ValueError, match="start_token_id"):
        model.generate([[3]], max_length=5, start_token_id=16)
    with pytest.raises(ValueError, match="max_sequence_length"):
        model.generate([[3] * 11], max_length=5, start_token_id=START)
    with pytest.raises(ValueError, match="at least one token"):
        model.generate([[3], []], max_length=5, start_token_id=START)
    with pytest.raises(TypeError, match="tokenize"):
        model.generate(["text"], max_length=5, start_token_id=START)


def test_presets():
    assert set(ENCODER_DECODER_PRESETS) >= {"seq2seq_nano", "transformer_base"}
    model = EncoderDecoder.from_preset("seq2seq_nano", vocabulary_size=30)
    assert model.num_encoder_layers == 2 and model.hidden_dim == 128
    with pytest.raises(ValueError, match="Unknown EncoderDecoder preset"):
        EncoderDecoder.from_preset("huge", vocabulary_size=30)
