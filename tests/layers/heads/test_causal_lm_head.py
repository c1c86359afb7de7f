import os

import keras
import keras_hub
import numpy as np
import pytest

from keras_llm.layers.heads import CausalLMHead
from tests.layer_test_case import run_layer_test

B, T, D, V = 2, 4, 8, 11


def _x(seed=0):
    return np.random.default_rng(seed).normal(size=(B, T, D)).astype("float32")


@pytest.mark.parametrize("use_bias", [False, True])
def test_layer_contract_untied(use_bias):
    run_layer_test(
        CausalLMHead,
        dict(vocabulary_size=V, use_bias=use_bias),
        _x(),
        expected_output_shape=(B, T, V),
        expected_num_trainable_weights=2 if use_bias else 1,
        float32_output=True,
    )


def test_layer_contract_tied():
    # The head revived from its config owns a copy of the embedding.
    run_layer_test(
        CausalLMHead,
        dict(
            vocabulary_size=V,
            token_embedding=keras.layers.ReversibleEmbedding(V, D),
            use_bias=True,
        ),
        _x(),
        expected_output_shape=(B, T, V),
        expected_num_trainable_weights=2,
        float32_output=True,
    )


EMBEDDINGS = {
    "keras_reversible": lambda: keras.layers.ReversibleEmbedding(V, D),
    "keras_hub_reversible": lambda: keras_hub.layers.ReversibleEmbedding(V, D),
    "embedding": lambda: keras.layers.Embedding(V, D),
}


@pytest.mark.parametrize("kind", sorted(EMBEDDINGS))
def test_tied_logits_equal_hidden_times_embeddings_transposed(kind):
    for use_bias in (False, True):
        embedding = EMBEDDINGS[kind]()
        head = CausalLMHead(V, token_embedding=embedding, use_bias=use_bias)
        x = _x()
        out = keras.ops.convert_to_numpy(head(x))
        expected = x @ embedding.embeddings.numpy().T
        if use_bias:
            head.bias.assign(np.arange(V, dtype="float32"))
            out = keras.ops.convert_to_numpy(head(x))
            expected = expected + np.arange(V)
        np.testing.assert_allclose(out, expected, atol=1e-5)
        # The head holds no copy: the embedding's variable is the kernel.
        own = [
            w for w in head.trainable_weights if w is not embedding.embeddings
        ]
        assert len(own) == (1 if use_bias else 0)


def test_untied_logits_equal_hidden_times_kernel():
    head = CausalLMHead(V)
    x = _x()
    out = keras.ops.convert_to_numpy(head(x))
    np.testing.assert_allclose(
        out, x @ head.logits_dense.kernel.numpy(), atol=1e-5
    )
    assert head(x[:, 0]).shape == (B, V)


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_float32_logits_under_mixed_precision(policy):
    keras.config.set_dtype_policy(policy)
    embedding = keras.layers.ReversibleEmbedding(V, D)
    for head in (CausalLMHead(V, token_embedding=embedding), CausalLMHead(V)):
        out = head(embedding(np.array([[1, 2, 3]])))
        assert keras.backend.standardize_dtype(out.dtype) == "float32"


@keras.saving.register_keras_serializable(package="keras_llm_tests")
class TinyTiedLM(keras.Model):
    """A model that owns the embedding and passes it to its head."""

    def __init__(self, vocabulary_size, hidden_dim, **kwargs):
        super().__init__(**kwargs)
        self.vocabulary_size = vocabulary_size
        self.hidden_dim = hidden_dim
        self.embedding = keras.layers.ReversibleEmbedding(
            vocabulary_size, hidden_dim, name="embedding"
        )
        self.mixer = keras.layers.Dense(hidden_dim, name="mixer")
        self.head = CausalLMHead(
            vocabulary_size, token_embedding=self.embedding, name="head"
        )

    def call(self, token_ids):
        return self.head(self.mixer(self.embedding(token_ids)))

    def get_config(self):
        config = super().get_config()
        config.update(
            vocabulary_size=self.vocabulary_size, hidden_dim=self.hidden_dim
        )
        return config


def test_tied_save_load_through_owning_model(tmp_path):
    model = TinyTiedLM(V, D)
    ids = np.random.default_rng(0).integers(0, V, size=(B, T))
    model.compile(
        optimizer=keras.optimizers.SGD(0.5),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    model.fit(ids, np.roll(ids, -1, axis=1), epochs=1, verbose=0)
    # One embedding matrix in the whole model: the tie holds.
    assert len(model.trainable_weights) == 3
    before = model.predict(ids, verbose=0)
    path = os.path.join(tmp_path, "tied.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_allclose(
        loaded.predict(ids, verbose=0), before, atol=1e-6
    )
    assert loaded.head.token_embedding is loaded.embedding
    assert len(loaded.trainable_weights) == 3
    # Changing the embedding changes the head's logits.
    loaded.embedding.embeddings.assign(loaded.embedding.embeddings * 2.0)
    hidden = np.ones((1, 1, D), "float32")
    np.testing.assert_allclose(
        loaded.head(hidden),
        hidden @ loaded.embedding.embeddings.numpy().T,
        atol=1e-5,
    )


def test_untied_config_round_trip():
    head = CausalLMHead(V, use_bias=True, name="lm")
    head(_x())
    revived = CausalLMHead.from_config(head.get_config())
    assert revived.get_config() == head.get_config()
    assert revived.token_embedding is None


def test_bad_arguments():
    with pytest.raises(ValueError, match="vocabulary_size"):
        CausalLMHead(0)
    with pytest.raises(ValueError, match="input_dim"):
        CausalLMHead(V + 1, token_embedding=keras.layers.Embedding(V, D))
    with pytest.raises(TypeError, match="token_embedding"):
        CausalLMHead(V, token_embedding=keras.layers.Dense(D))
    with pytest.raises(ValueError, match="output_dim"):
        CausalLMHead(V, token_embedding=keras.layers.Embedding(V, D + 1))(_x())
