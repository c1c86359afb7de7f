"""The efficient attention layers inside GPT: switching weights, decoding
with a cache, XLA training, and a CLM on tinyshakespeare next to dense."""

import os
import tempfile

import keras
import numpy as np
import pytest

from keras_llm.models import GPT

# Each efficient attention with a configuration that is sparse at T=64.
EFFICIENT = {
    "sliding_window": dict(window=16),
    "block_sparse": dict(block_size=8, num_random_blocks=1, seed=1),
    "axial": dict(axial_shape=(8,)),
    "lsh": dict(chunk_length=16, num_buckets=4, num_hashes=2),
}
VOCAB = 40


def _gpt(**kwargs):
    options = dict(
        vocabulary_size=VOCAB,
        num_layers=2,
        num_heads=2,
        hidden_dim=16,
        max_sequence_length=64,
        position_embedding="rotary",
    )
    options.update(kwargs)
    return GPT(**options)


def _tokens(t, seed=0, batch=2):
    return np.random.default_rng(seed).integers(0, VOCAB, (batch, t))


@pytest.mark.parametrize(
    "attention,options",
    [
        ("mha", {}),
        ("sliding_window", dict(window=24)),
        ("block_sparse", dict(block_size=4, num_window_blocks=11)),
    ],
)
def test_dense_weights_switch_to_efficient_attention(attention, options):
    """A dense-trained model keeps its outputs when the pattern covers all."""
    dense = _gpt()
    tokens = _tokens(20)
    switched = dense.with_attention(attention, **options)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(switched(tokens)),
        keras.ops.convert_to_numpy(dense(tokens)),
        atol=1e-5,
    )
    # And back: the fused dense layer takes the converted weights.
    back = switched.with_attention("dense")
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(back(tokens)),
        keras.ops.convert_to_numpy(dense(tokens)),
        atol=1e-5,
    )


@pytest.mark.parametrize("attention", sorted(EFFICIENT))
def test_switched_model_saves_and_loads(attention):
    model = _gpt().with_attention(attention, **EFFICIENT[attention])
    tokens = _tokens(40)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "gpt.keras")
        model.save(path)
        loaded = keras.saving.load_model(path)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(loaded(tokens)),
        keras.ops.convert_to_numpy(model(tokens)),
        atol=1e-6,
    )
    assert loaded.get_config()["attention"] == attention


def test_attention_arguments_pass_through_the_model():
    model = _gpt(num_layers=1, attention="sliding_window", window=8)
    assert model.get_config()["attention_kwargs"] == {"window": 8}
    assert model.blocks[0].self_attention.window == 8
    with pytest.raises(TypeError, match="windw"):
        _gpt(num_layers=1, attention="sliding_window", windw=8)
    with pytest.raises(ValueError, match="window"):
        _gpt(num_layers=1, attention="sliding_window", window=0)


@pytest.mark.parametrize(
    "attention,options",
    [
        ("sliding_window", dict(window=5, num_global_tokens=2)),
        ("block_sparse", dict(block_size=4, num_random_blocks=1, seed=3)),
        ("axial", dict(axial_shape=(4,))),
    ],
)
def test_cached_decoding_matches_the_full_forward_pass(attention, options):
    """Token-by-token decoding with a cache sees the training pattern."""
    model = _gpt(attention=attention, attention_kwargs=options)
    t = 16
    tokens = _tokens(t)
    full = keras.ops.convert_to_numpy(model(tokens))
    cache = model._empty_cache(2, t)
    steps = []
    for i in range(t):
        logits, _, cache = model.call_with_cache(tokens[:, i : i + 1], cache, i)
        steps.append(keras.ops.convert_to_numpy(logits))
    np.testing.assert_allclose(np.concatenate(steps, axis=1), full, atol=1e-4)


@pytest.mark.parametrize("attention", sorted(EFFICIENT))
def test_generate(attention):
    model = _gpt(attention=attention, attention_kwargs=EFFICIENT[attention])
    out = model.generate([[1, 2, 3]], max_length=12, seed=0)
    assert len(out[0]) == 12
    assert list(out[0][:3]) == [1, 2, 3]


@pytest.mark.parametrize("attention", sorted(EFFICIENT))
def test_jit_compiled_fit_with_mixed_precision(attention):
    model = _gpt(
        attention=attention,
        attention_kwargs=EFFICIENT[attention],
        dtype="mixed_bfloat16",
    )
    model.compile(
        "adam",
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=True,
    )
    tokens = _tokens(48, batch=4)
    history = model.fit(tokens[:, :-1], tokens[:, 1:], epochs=2, verbose=0)
    assert all(np.isfinite(history.history["loss"]))


SHAKESPEARE = os.path.join(
    os.path.dirname(__file__), "..", "..", "..", "shared", "data",
    "tinyshakespeare.txt",
)  # fmt: skip


def _training_text():
    """tinyshakespeare (the benchmark corpus) where the checkout has it,
    else the embedded corpus, so the comparison runs on any machine."""
    if os.path.exists(SHAKESPEARE):
        with open(SHAKESPEARE, encoding="utf-8") as f:
            return f.read()[:300_000]
    from keras_llm.data import default_corpus

    return "\n".join(default_corpus())[:300_000]


@pytest.mark.slow
def test_each_attention_trains_a_clm_within_5_percent_of_dense():
    """Same initial weights, data and steps: every efficient attention
    reaches a validation loss within 5% of dense attention's."""
    from keras_llm.data import CharacterTokenizer
    from keras_llm.data.pipelines import clm_dataset
    from keras_llm.data.pipelines import split_tokens

    text = _training_text()
    tokenizer = CharacterTokenizer.from_texts([text])
    ids = keras.ops.convert_to_numpy(tokenizer(text))
    train, val = split_tokens(ids, 0.1)
    t, steps = 64, 300
    # The same batches, in the same order, for every model.
    x, y = next(iter(clm_dataset(train, t, 16 * steps, seed=0, stride=t // 4)))
    x, y = x.numpy(), y.numpy()
    val_x, val_y = next(iter(clm_dataset(val, t, 256, shuffle=False)))
    initial = GPT(
        vocabulary_size=tokenizer.vocabulary_size(),
        num_layers=2,
        num_heads=4,
        hidden_dim=64,
        max_sequence_length=t,
        position_embedding="rotary",
    )
    losses = {}
    for name, options in [("dense", {})] + sorted(EFFICIENT.items()):
        model = initial.with_attention(name, **options)
        model.compile(
            keras.optimizers.Adam(3e-3),
            keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            jit_compile=True,
        )
        model.fit(x, y, batch_size=16, shuffle=False, verbose=0)
        losses[name] = model.evaluate(val_x, val_y, batch_size=64, verbose=0)
    print("validation loss after", steps, "steps:", losses)
    assert losses["dense"] < 3.0, losses  # it learned (uniform is ~4)
    for name in EFFICIENT:
        assert losses[name] <= 1.05 * losses["dense"], (name, losses)
