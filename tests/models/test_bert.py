import os

import keras
import keras_hub
import numpy as np
import pytest
import tensorflow as tf

from keras_llm.data import mlm_nsp_dataset
from keras_llm.data.mlm_nsp import SPECIAL_TOKENS
from keras_llm.models import BERT
from keras_llm.models import BertPretrainer
from keras_llm.models.presets import BERT_PRESETS
from keras_llm.models.presets import get_bert_preset
from keras_llm.models.presets import get_preset

TINY = dict(
    vocabulary_size=30,
    num_layers=2,
    num_heads=2,
    hidden_dim=16,
    intermediate_dim=32,
    max_sequence_length=16,
)


def _inputs(batch=2, length=10, seed=0):
    """Token ids with 3 trailing pads, segment ids 0 then 1."""
    rng = np.random.default_rng(seed)
    token_ids = rng.integers(5, 30, (batch, length)).astype("int32")
    token_ids[:, -3:] = 0
    segment_ids = np.zeros_like(token_ids)
    segment_ids[:, 4 : length - 3] = 1
    return {
        "token_ids": token_ids,
        "segment_ids": segment_ids,
        "padding_mask": (token_ids != 0).astype("int32"),
    }


def _pretrainer_inputs(batch=2, length=10, seed=0):
    x = _inputs(batch, length, seed)
    x["mask_positions"] = np.tile(np.array([[1, 5, 0]], "int32"), (batch, 1))
    return x


# Synthetic corpus: 6 documents of 8 sentences, each sentence a word of its
# own repeated; a document's words are its own, so NSP is learnable as
# "are A and B from the same document" and MLM by copying a neighbour.
# Documents (about 60 tokens) are longer than a pair (29 tokens), so both
# kinds of pair usually fill the sequence: its length gives NSP away rarely.
NUM_DOCS, NUM_SENTENCES = 6, 20


@pytest.fixture(scope="module")
def corpus():
    rng = np.random.default_rng(0)
    documents = [
        [
            " ".join([f"d{d}s{s}"] * int(rng.integers(2, 5)))
            for s in range(NUM_SENTENCES)
        ]
        for d in range(NUM_DOCS)
    ]
    words = [f"d{d}s{s}" for d in range(NUM_DOCS) for s in range(NUM_SENTENCES)]
    tokenizer = keras_hub.tokenizers.WordPieceTokenizer(
        vocabulary=list(SPECIAL_TOKENS) + words, dtype="int32"
    )
    return documents, tokenizer


def _tiny_pretrainer(vocabulary_size, **kwargs):
    backbone = BERT(
        **dict(
            TINY,
            vocabulary_size=vocabulary_size,
            hidden_dim=32,
            max_sequence_length=32,
            dropout=0.0,
        )
    )
    return BertPretrainer(backbone, dropout=0.0, **kwargs)


def test_sequence_output_defaults_padding_and_segments():
    model = BERT(**TINY)
    x = _inputs()
    out = model(x)
    assert out.shape == (2, 10, 16)
    assert keras.backend.standardize_dtype(out.dtype) == "float32"
    assert model.hidden_dim == 16
    assert isinstance(model.token_embedding, keras.layers.ReversibleEmbedding)
    # padding_mask defaults to token_ids != 0; segment_ids to zeros.
    no_mask = {k: v for k, v in x.items() if k != "padding_mask"}
    np.testing.assert_allclose(model(no_mask), out, atol=1e-6)
    np.testing.assert_allclose(
        model(x["token_ids"]),
        model(dict(x, segment_ids=np.zeros_like(x["segment_ids"]))),
        atol=1e-6,
    )
    # Tokens under the padding mask do not reach the real positions...
    changed = dict(x, token_ids=x["token_ids"].copy())
    changed["token_ids"][:, -3:] = 7
    np.testing.assert_allclose(model(changed)[:, :-3], out[:, :-3], atol=1e-5)
    # ...but do once the mask lets them in.
    unmasked = dict(changed, padding_mask=np.ones_like(x["padding_mask"]))
    assert not np.allclose(model(unmasked)[:, :-3], out[:, :-3], atol=1e-3)
    # Segment ids matter.
    flipped = dict(x, segment_ids=1 - x["segment_ids"])
    assert not np.allclose(model(flipped), out, atol=1e-3)
    # Bidirectional: an early position sees a later token.
    later = dict(x, token_ids=x["token_ids"].copy())
    later["token_ids"][:, 6] = (later["token_ids"][:, 6] - 4) % 25 + 5
    assert not np.allclose(model(later)[:, 0], out[:, 0], atol=1e-4)


@pytest.mark.parametrize(
    "variant",
    [
        {},
        dict(
            normalization="pre",
            activation="swiglu",
            use_bias=False,
            attention_dropout=0.0,
            num_segments=3,
        ),
    ],
)
def test_save_load_identical_outputs(tmp_path, variant):
    model = BERT(**TINY, **variant)
    config = model.get_config()
    assert BERT.from_config(config).get_config() == config
    x = _inputs()
    before = model(x)
    path = os.path.join(tmp_path, "bert.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded, BERT)
    assert loaded.get_config() == config
    np.testing.assert_array_equal(before, loaded(x))
    assert (loaded.final_norm is None) == (variant == {})


def test_presets_and_bert_base_size():
    model = BERT.from_preset("bert_nano", vocabulary_size=100)
    assert model.num_layers == 2 and model.hidden_dim == 64
    assert set(BERT_PRESETS) >= {"bert_nano", "bert_mini", "bert_base"}
    with pytest.raises(ValueError, match="Unknown BERT preset 'huge'"):
        get_bert_preset("huge")
    with pytest.raises(ValueError, match="Unknown preset 'bert_nano'"):
        get_preset("bert_nano")  # the GPT presets are unchanged
    base = BERT.from_preset("bert_base")
    # 110M in the paper counts the pooler (0.6M), which lives in the heads.
    assert round(base.count_params() / 1e6) == 109


@pytest.mark.parametrize(
    "override, message",
    [
        (dict(vocabulary_size=0), "vocabulary_size"),
        (dict(num_layers=-1), "num_layers"),
        (dict(hidden_dim=15), "divisible"),
        (dict(normalization="sandwich"), "normalization"),
        (dict(dropout=1.5), "dropout"),
    ],
)
def test_bad_arguments(override, message):
    with pytest.raises(ValueError, match=message):
        BERT(**dict(TINY, **override))


def test_bad_inputs_and_backbone():
    model = BERT(**TINY)
    with pytest.raises(ValueError, match="token_ids"):
        model({"tokens": np.ones((1, 4), "int32")})
    with pytest.raises(TypeError, match="BERT"):
        BertPretrainer(keras.Sequential([keras.layers.Dense(2)]))
    with pytest.raises(ValueError, match="mlm_weight"):
        BertPretrainer(model, mlm_weight=-1.0)


def test_mlm_head_is_tied_to_the_token_embedding():
    pretrainer = BertPretrainer(BERT(**TINY))
    x = _pretrainer_inputs()
    head = pretrainer.mlm_head
    assert head.token_embedding is pretrainer.backbone.token_embedding
    # One vocabulary matrix: the embedding; the head adds only a bias.
    names = [w.path for w in pretrainer.weights]
    assert sum("embeddings" in n and "token" in n for n in names) == 1
    assert not any("output_kernel" in n for n in names)

    def expected():
        sequence = pretrainer.backbone(
            {k: v for k, v in x.items() if k != "mask_positions"}
        )
        gathered = np.take_along_axis(
            np.asarray(sequence), x["mask_positions"][..., None], axis=1
        )
        h = head._intermediate_layer_norm(head._intermediate_dense(gathered))
        table = pretrainer.backbone.token_embedding.embeddings.numpy()
        return np.asarray(h) @ table.T + head._bias.numpy()

    logits = pretrainer(x)["mlm"]
    assert logits.shape == (2, 3, 30)
    np.testing.assert_allclose(logits, expected(), atol=1e-5)
    # Changing the embedding changes the output projection with it.
    embedding = pretrainer.backbone.token_embedding.embeddings
    embedding.assign(embedding.numpy() * 2.0)
    np.testing.assert_allclose(pretrainer(x)["mlm"], expected(), atol=1e-5)


def test_remat_gives_the_same_gradients_and_saves(tmp_path):
    x = _inputs()
    grads = {}
    for remat in (False, True):
        keras.utils.set_random_seed(1)
        model = BERT(**TINY, remat=remat, dropout=0.0)
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(model(x, training=True) ** 2)
        grads[remat] = [
            tf.convert_to_tensor(g)  # the embedding's are IndexedSlices
            for g in tape.gradient(loss, model.trainable_weights)
        ]
    assert all(block.remat for block in model.blocks)
    for plain, remat in zip(grads[False], grads[True]):
        np.testing.assert_allclose(plain, remat, rtol=1e-4, atol=1e-6)
    path = os.path.join(tmp_path, "remat.keras")
    model.save(path)
    assert all(b.remat for b in keras.saving.load_model(path).blocks)


def test_pretrainer_learns_mlm_and_nsp_saves_and_loads(corpus, tmp_path):
    documents, tokenizer = corpus
    data = mlm_nsp_dataset(
        documents, tokenizer, 32, batch_size=16, seed=1, repeat=True
    )
    pretrainer = _tiny_pretrainer(tokenizer.vocabulary_size())
    pretrainer.compile(optimizer=keras.optimizers.Adam(3e-3), jit_compile=False)
    start = [w.numpy().copy() for w in pretrainer.backbone.trainable_weights]
    history = pretrainer.fit(data, steps_per_epoch=50, epochs=5, verbose=0)
    h = history.history
    assert set(h) >= {
        "loss",
        "mlm_loss",
        "nsp_loss",
        "mlm_accuracy",
        "mlm_perplexity",
        "nsp_accuracy",
    }
    assert h["mlm_loss"][-1] < 0.6 * h["mlm_loss"][0]
    assert h["nsp_accuracy"][0] < 0.65  # chance is 0.5...
    assert h["nsp_accuracy"][-1] > 0.7  # ...and it learns
    moved = [
        not np.allclose(w0, w.numpy())
        for w0, w in zip(start, pretrainer.backbone.trainable_weights)
    ]
    assert all(moved)

    eval_data = mlm_nsp_dataset(
        documents, tokenizer, 32, 16, seed=5, shuffle=False
    )
    scores = pretrainer.evaluate(eval_data, return_dict=True, verbose=0)
    assert scores["nsp_accuracy"] > 0.7
    # mlm_loss is per masked token: exp of it is about the perplexity.
    assert np.exp(scores["mlm_loss"]) == pytest.approx(
        scores["mlm_perplexity"], rel=0.05
    )
    path = os.path.join(tmp_path, "pretrainer.keras")
    pretrainer.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded, BertPretrainer)
    assert loaded.mlm_head.token_embedding is loaded.backbone.token_embedding
    x = _pretrainer_inputs()
    outputs = loaded(x)
    for name, value in pretrainer(x).items():
        np.testing.assert_array_equal(value, outputs[name])
    # The compile configuration (losses, weights, metrics) comes back too.
    again = loaded.evaluate(eval_data, return_dict=True, verbose=0)
    for name, value in scores.items():
        assert again[name] == pytest.approx(value, rel=1e-5), name


def test_fit_under_mirrored_strategy_in_mixed_bfloat16(
    corpus, mirrored_strategy
):
    documents, tokenizer = corpus
    data = mlm_nsp_dataset(documents, tokenizer, 32, 8, seed=1).take(6)
    keras.config.set_dtype_policy("mixed_bfloat16")
    with mirrored_strategy.scope():
        pretrainer = _tiny_pretrainer(
            tokenizer.vocabulary_size(), mlm_weight=0.5, nsp_weight=2.0
        )
        pretrainer.compile(
            optimizer=keras.optimizers.Adam(3e-3), jit_compile=False
        )
    out = pretrainer(_pretrainer_inputs())
    for logits in out.values():
        assert keras.backend.standardize_dtype(logits.dtype) == "float32"
    assert pretrainer.backbone.blocks[0].compute_dtype == "bfloat16"
    assert all(w.dtype == "float32" for w in pretrainer.trainable_weights)
    h = pretrainer.fit(data, epochs=2, verbose=0).history
    assert np.isfinite(h["loss"]).all()
    assert h["mlm_loss"][1] < h["mlm_loss"][0]
    # The total is the weighted sum of the per-head losses.
    np.testing.assert_allclose(
        h["loss"],
        0.5 * np.array(h["mlm_loss"]) + 2.0 * np.array(h["nsp_loss"]),
        rtol=1e-3,
    )


def _copy_keras_hub_bert(hub, ours):
    """Copies a keras-hub `BertBackbone`'s weights into our `BERT`."""
    get = {w.path: w.numpy() for w in hub.weights}
    put = {w.path: w for w in ours.weights}
    for name in ("token", "position", "segment"):
        key = f"{name}_embedding/embeddings"
        put[key].assign(get[key])
    for part in ("gamma", "beta"):
        put[f"embedding_norm/{part}"].assign(
            get[f"embeddings_layer_norm/{part}"]
        )
    for i in range(ours.num_layers):
        src, dst = f"transformer_layer_{i}/", f"block_{i}/"
        attention = src + "self_attention_layer/"

        def flat(name, kind, attention=attention):
            value = get[f"{attention}{name}/{kind}"]
            return (
                value.reshape(value.shape[0], -1)
                if kind == "kernel"
                else (value.reshape(-1))
            )

        for kind in ("kernel", "bias"):
            put[f"{dst}self_attention/qkv/{kind}"].assign(
                np.concatenate(
                    [flat(n, kind) for n in ("query", "key", "value")], -1
                )
            )
        out = get[attention + "attention_output/kernel"]
        put[dst + "self_attention/output/kernel"].assign(
            out.reshape(-1, out.shape[-1])
        )
        put[dst + "self_attention/output/bias"].assign(
            get[attention + "attention_output/bias"]
        )
        for ours_norm, hub_norm in (
            ("self_attention_norm", "self_attention_layer_norm"),
            ("feed_forward_norm", "feedforward_layer_norm"),
        ):
            for part in ("gamma", "beta"):
                put[f"{dst}{ours_norm}/{part}"].assign(
                    get[f"{src}{hub_norm}/{part}"]
                )
        for ours_dense, hub_dense in (
            ("up", "feedforward_intermediate_dense"),
            ("down", "feedforward_output_dense"),
        ):
            for kind in ("kernel", "bias"):
                put[f"{dst}feed_forward/{ours_dense}/{kind}"].assign(
                    get[f"{src}{hub_dense}/{kind}"]
                )


def test_same_outputs_as_keras_hub_bert_with_the_same_weights():
    config = dict(TINY, dropout=0.0)
    keras.utils.set_random_seed(3)
    hub = keras_hub.models.BertBackbone(**config)
    ours = BERT(**config)
    x = _inputs()
    ours(x)
    _copy_keras_hub_bert(hub, ours)
    expected = hub(x)["sequence_output"]
    np.testing.assert_allclose(ours(x), expected, atol=2e-5)
    # Not the same by accident: other weights give other outputs.
    assert not np.allclose(BERT(**config)(x), expected, atol=1e-2)
