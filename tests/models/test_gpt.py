import os

import keras
import keras_hub
import numpy as np
import pytest

from keras_llm.data import CharacterTokenizer
from keras_llm.models import GPT
from keras_llm.models.presets import GPT_PRESETS
from keras_llm.models.presets import get_preset

TINY = dict(
    vocabulary_size=20,
    num_layers=2,
    num_heads=2,
    hidden_dim=16,
    max_sequence_length=24,
)


def _tokens(batch=2, length=8, seed=0):
    return (
        np.random.default_rng(seed)
        .integers(0, 20, (batch, length))
        .astype("int32")
    )


def test_forward_shape_and_float32_logits():
    model = GPT(**TINY)
    logits = model(_tokens())
    assert logits.shape == (2, 8, 20)
    assert keras.backend.standardize_dtype(logits.dtype) == "float32"


def test_causal_logits_ignore_future_tokens():
    model = GPT(**TINY)
    x = _tokens()
    changed = x.copy()
    changed[:, 5:] = (changed[:, 5:] + 1) % 20
    np.testing.assert_allclose(
        model(x)[:, :5], model(changed)[:, :5], atol=1e-5
    )


@pytest.mark.parametrize(
    "variant",
    [
        {},
        dict(position_embedding="rotary", activation="swiglu", use_bias=False),
        dict(normalization="post", tie_embeddings=False, num_key_value_heads=1),
    ],
)
def test_save_load_identical_outputs(tmp_path, variant):
    model = GPT(**TINY, **variant)
    x = _tokens()
    before = model.predict(x, verbose=0)
    path = os.path.join(tmp_path, "gpt.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded, GPT)
    assert loaded.get_config() == model.get_config()
    np.testing.assert_array_equal(before, loaded.predict(x, verbose=0))


@pytest.mark.parametrize("position_embedding", ["learned", "rotary"])
def test_cached_greedy_generation_equals_full_recompute(position_embedding):
    model = GPT(**TINY, position_embedding=position_embedding)
    prompts = [[1, 2, 3, 4], [5, 6]]
    out = model.generate(prompts, max_length=12, sampler="greedy")
    assert out.shape == (2, 12)
    for row, prompt in zip(out, prompts):
        seq = list(prompt)
        while len(seq) < 12:
            logits = model(np.array([seq], "int32"))
            seq.append(int(np.argmax(logits[0, -1])))
        np.testing.assert_array_equal(row, seq)


def test_samplers_and_seed():
    model = GPT(**TINY)
    for sampler in (
        "greedy",
        "top_k",
        "top_p",
        keras_hub.samplers.TopKSampler(k=3, temperature=0.7),
        "beam",
    ):
        out = model.generate([[1, 2]], max_length=10, sampler=sampler, seed=3)
        assert out.shape == (1, 10)
        assert ((out >= 0) & (out < 20)).all()
    beams = model.generate(
        [[1, 2, 3], [4, 5, 6]],
        max_length=10,
        sampler=keras_hub.samplers.BeamSampler(num_beams=3),
    )
    assert beams.shape == (2, 10)
    np.testing.assert_array_equal(beams[:, :3], [[1, 2, 3], [4, 5, 6]])
    one_beam = model.generate(
        [[1, 2, 3]], max_length=10, sampler=keras_hub.samplers.BeamSampler(1)
    )
    greedy = model.generate([[1, 2, 3]], max_length=10, sampler="greedy")
    np.testing.assert_array_equal(one_beam, greedy)
    a = model.generate([[1, 2]], max_length=16, sampler="top_k", seed=5)
    b = model.generate([[1, 2]], max_length=16, sampler="top_k", seed=5)
    np.testing.assert_array_equal(a, b)


def test_generate_with_tokenizer_and_stop_tokens():
    tokenizer = CharacterTokenizer.from_texts(["abcdefghij. "])
    model = GPT(**dict(TINY, vocabulary_size=tokenizer.vocabulary_size()))
    text = model.generate("abc", max_length=10, tokenizer=tokenizer)
    assert isinstance(text, str) and text.startswith("abc")
    texts = model.generate(["ab", "cde"], max_length=8, tokenizer=tokenizer)
    assert [t[:2] for t in texts] == ["ab", "cd"]
    stop = tokenizer.token_to_id(".")
    out = model.generate(
        [[1, 2]], max_length=20, sampler="greedy", stop_token_ids=[stop]
    )
    assert out.shape == (1, 20)


def test_learns_a_repeating_sequence():
    """A 2-layer GPT memorises a cyclic pattern: loss falls close to zero."""
    model = GPT(**TINY)
    pattern = np.tile(np.arange(7), 20)
    x = np.stack([pattern[i : i + 16] for i in range(40)]).astype("int32")
    y = np.stack([pattern[i + 1 : i + 17] for i in range(40)]).astype("int32")
    model.compile(
        optimizer=keras.optimizers.Adam(1e-2),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    history = model.fit(x, y, epochs=30, batch_size=8, verbose=0)
    assert history.history["loss"][-1] < 0.1
    out = model.generate([[0, 1, 2]], max_length=12, sampler="greedy")
    np.testing.assert_array_equal(out[0], np.arange(12) % 7)


def test_fit_under_mirrored_strategy(mirrored_strategy):
    with mirrored_strategy.scope():
        model = GPT(**TINY)
        model.compile(
            optimizer="adam",
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
    x = _tokens(8, 8)
    history = model.fit(x, x, batch_size=4, epochs=2, verbose=0)
    assert np.isfinite(history.history["loss"]).all()
    assert history.history["loss"][1] < history.history["loss"][0]


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_global_policy(policy):
    keras.config.set_dtype_policy(policy)
    model = GPT(**TINY)
    logits = model(_tokens())
    assert keras.backend.standardize_dtype(logits.dtype) == "float32"
    assert all(w.dtype == "float32" for w in model.trainable_weights)
    assert model.blocks[0].compute_dtype == policy.split("_")[1]
    model.compile(
        optimizer="adam",
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    history = model.fit(_tokens(4), _tokens(4), epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    out = model.generate([[1, 2]], max_length=6, sampler="greedy")
    assert out.shape == (1, 6)


def test_presets():
    model = GPT.from_preset("nano", vocabulary_size=65)
    assert model.num_layers == 4 and model.hidden_dim == 128
    assert set(GPT_PRESETS) >= {"nano", "gpt2-small"}
    with pytest.raises(ValueError, match="Unknown preset 'huge'"):
        get_preset("huge")


def test_gpt2_small_parameter_count():
    model = GPT.from_preset("gpt2-small")
    assert round(model.count_params() / 1e6) == 124


@pytest.mark.parametrize(
    "override, message",
    [
        (dict(vocabulary_size=0), "vocabulary_size"),
        (dict(num_layers=-1), "num_layers"),
        (dict(hidden_dim=15), "divisible"),
        (dict(position_embedding="sinusoid"), "position_embedding"),
    ],
)
def test_bad_arguments(override, message):
    with pytest.raises(ValueError, match=message):
        GPT(**dict(TINY, **override))


def test_bad_generate_arguments():
    model = GPT(**TINY)
    with pytest.raises(ValueError, match="max_length"):
        model.generate([[1, 2, 3]], max_length=3)
    with pytest.raises(ValueError, match="max_sequence_length"):
        model.generate([[1]], max_length=100)
    with pytest.raises(TypeError, match="tokenizer"):
        model.generate(["text"], max_length=5)
    with pytest.raises(ValueError, match="at least one token"):
        model.generate([[]], max_length=5)


def test_named_samplers_trace_once_and_seeds_repeat():
    model = GPT(**TINY)
    first = model.generate([[1, 2]], max_length=12, sampler="top_k", seed=9)
    model.generate([[3, 4]], max_length=12, sampler="top_k")
    again = model.generate([[1, 2]], max_length=12, sampler="top_k", seed=9)
    np.testing.assert_array_equal(first, again)
    other = model.generate([[1, 2]], max_length=12, sampler="top_k", seed=10)
    assert not np.array_equal(first, other)
    assert len(model._generate_functions) == 1


def test_attention_layer_argument_is_copied_per_block(tmp_path):
    from keras_llm.layers.attention import MultiHeadAttention

    model = GPT(
        **TINY,
        attention=MultiHeadAttention(num_heads=2, key_dim=8, use_bias=False),
    )
    first, second = (b.self_attention for b in model.blocks)
    assert first is not second and not first.use_bias
    path = str(tmp_path / "m.keras")
    model.save(path)
    x = _tokens()
    np.testing.assert_array_equal(
        model.predict(x, verbose=0),
        keras.saving.load_model(path).predict(x, verbose=0),
    )


def test_remat_trains_identically_saves_and_generates(
    tmp_path, mirrored_strategy
):
    x = _tokens(8, 8)
    losses = {}
    for remat in (False, True):
        with mirrored_strategy.scope():
            keras.utils.set_random_seed(5)
            model = GPT(**TINY, remat=remat)
            model.compile(
                optimizer=keras.optimizers.Adam(1e-2),
                loss=keras.losses.SparseCategoricalCrossentropy(
                    from_logits=True
                ),
            )
        history = model.fit(x, x, batch_size=4, epochs=3, verbose=0)
        losses[remat] = history.history["loss"]
    np.testing.assert_allclose(losses[True], losses[False], rtol=1e-5)
    assert all(block.remat for block in model.blocks)
    path = os.path.join(tmp_path, "remat.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert loaded.remat and all(block.remat for block in loaded.blocks)
    assert model.generate([[1, 2]], max_length=6, sampler="greedy").shape == (
        1,
        6,
    )
