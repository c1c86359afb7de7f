"""Tests of keras_llm.compression.distillation on tiny GPT and BERT models."""

import keras
import numpy as np
import pytest

import keras_llm
from keras_llm.compression.distillation import Distiller
from keras_llm.compression.distillation import MaskedLogitsDistillation
from keras_llm.compression.distillation import attention_probabilities
from keras_llm.finetuning import build_task_model

VOCAB = 16
LENGTH = 8


def _gpt(layers, width, heads=2, **kwargs):
    return keras_llm.models.GPT(
        vocabulary_size=VOCAB,
        num_layers=layers,
        num_heads=heads,
        hidden_dim=width,
        intermediate_dim=2 * width,
        max_sequence_length=LENGTH,
        **kwargs,
    )


def _patterned_tokens(n, seed=0):
    """Sequences `s, s+k, s+2k, ...` mod VOCAB: learnable next tokens."""
    rng = np.random.default_rng(seed)
    start = rng.integers(0, VOCAB, (n, 1))
    step = rng.integers(1, 4, (n, 1))
    return ((start + step * np.arange(LENGTH + 1)) % VOCAB).astype("int32")


@pytest.fixture(scope="module")
def trained_teacher():
    """A 2-block GPT trained a little, so its predictions are peaked."""
    keras.utils.set_random_seed(1)
    teacher = _gpt(2, 16)
    tokens = _patterned_tokens(256)
    teacher.compile(
        optimizer=keras.optimizers.Adam(1e-2),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    teacher.fit(
        tokens[:, :-1], tokens[:, 1:], epochs=6, batch_size=32, verbose=0
    )
    return teacher


def _log_softmax(z):
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def _kl(teacher_logits, student_logits, temperature):
    log_p = _log_softmax(teacher_logits / temperature)
    log_q = _log_softmax(student_logits / temperature)
    return (np.exp(log_p) * (log_p - log_q)).sum(-1)


def test_loss_terms_match_hand_computed_values():
    keras.utils.set_random_seed(0)
    teacher, student = _gpt(2, 16), _gpt(1, 8)
    # Sharpen the random teacher so the KL is far from zero.
    emb = teacher.token_embedding.embeddings
    emb.assign(emb * 40.0)
    tokens = _patterned_tokens(4)
    x, y = tokens[:, :-1], tokens[:, 1:]
    weights = np.ones((4, LENGTH), "float32")
    weights[0, 5:] = 0.0  # padding
    weights[2, 2:] = 0.0
    temperature, alpha = 3.0, 0.3
    distiller = Distiller(
        teacher, student, temperature=temperature, alpha=alpha
    )
    distiller.compile()
    terms = distiller.distillation_terms(x, y, sample_weight=weights)

    t = keras.ops.convert_to_numpy(teacher(x)).astype("float64")
    s = keras.ops.convert_to_numpy(student(x)).astype("float64")
    ce = -np.take_along_axis(_log_softmax(s), y[..., None], -1)[..., 0]
    kl = _kl(t, s, temperature) * temperature**2
    expected_ce = (ce * weights).sum() / weights.sum()
    expected_kd = (kl * weights).sum() / weights.sum()
    np.testing.assert_allclose(terms["student_loss"], expected_ce, rtol=1e-4)
    np.testing.assert_allclose(
        terms["distillation_loss"], expected_kd, rtol=1e-4
    )
    np.testing.assert_allclose(
        terms["total_loss"],
        alpha * expected_ce + (1 - alpha) * expected_kd,
        rtol=1e-4,
    )
    # The masked positions are really excluded (they change the mean).
    assert abs(kl.mean() - expected_kd) > 1e-3 * expected_kd
    # ignore_class drops positions whose label is that id.
    ignoring = Distiller(teacher, student, ignore_class=int(y[1, 0]))
    ignoring.compile()
    keep = (y != y[1, 0]).astype("float64")
    ce_t = ignoring.distillation_terms(x, y)["student_loss"]
    np.testing.assert_allclose(ce_t, (ce * keep).sum() / keep.sum(), 1e-4)


def test_masked_logits_distillation_equals_keras_kl_times_t_squared():
    rng = np.random.default_rng(0)
    t = rng.normal(size=(3, 4, 7)).astype("float32") * 3
    s = rng.normal(size=(3, 4, 7)).astype("float32") * 3
    ours = MaskedLogitsDistillation(temperature=2.5).compute_loss(t, s)
    keras_kl = keras.distillation.LogitsDistillation(
        temperature=2.5, loss=keras.losses.KLDivergence()
    ).compute_loss(t, s)
    np.testing.assert_allclose(ours, keras_kl, rtol=1e-4)


def test_hidden_projection_only_when_widths_differ():
    teacher = _gpt(2, 16)
    narrow = Distiller(teacher, _gpt(1, 8), hidden_layer_map={0: 1})
    assert [p.name for p in narrow.hidden_projections] == [
        "hidden_projection_0_1"
    ]
    assert narrow.hidden_projections[0].kernel.shape == (8, 16)
    # The projection is trained with the student, and is not in it.
    trainable = {id(v) for v in narrow.trainable_variables}
    assert id(narrow.hidden_projections[0].kernel) in trainable
    assert id(narrow.hidden_projections[0].kernel) not in {
        id(v) for v in narrow.student.weights
    }

    same_student = _gpt(2, 16)
    same = Distiller(teacher, same_student, hidden_layer_map="uniform")
    assert same.hidden_projections == []
    assert same.hidden_layer_map == [(0, 0), (1, 1)]
    # Without a projection the term is the masked MSE of the block outputs.
    tokens = _patterned_tokens(2)[:, :-1]
    weights = np.array([[1] * 6 + [0] * 2, [1] * LENGTH], "float32")
    same.compile()
    got = same.distillation_terms(tokens, sample_weight=weights)
    expected = []
    for block in (0, 1):
        views = [
            keras.Model(m.input, m.blocks[block].output)
            for m in (same_student, teacher)
        ]
        hs, ht = (keras.ops.convert_to_numpy(v(tokens)) for v in views)
        mse = ((hs - ht) ** 2).mean(-1)
        expected.append((mse * weights).sum() / weights.sum())
    np.testing.assert_allclose(got["hidden_loss"], np.mean(expected), 1e-5)


@pytest.mark.parametrize("kind", ["gpt_rotary_gqa", "bert_padding"])
def test_attention_probabilities_reproduce_the_block(kind):
    keras.utils.set_random_seed(0)
    if kind == "gpt_rotary_gqa":
        model = _gpt(1, 16, heads=4, num_key_value_heads=2,
                     position_embedding="rotary")  # fmt: skip
        padding = None
    else:
        model = keras_llm.models.BERT(
            vocabulary_size=VOCAB, num_layers=1, num_heads=2, hidden_dim=16,
            max_sequence_length=LENGTH, dropout=0.0,
        )  # fmt: skip
        padding = np.array([[1] * 5 + [0] * 3, [1] * LENGTH], "int32")
    block = model.blocks[0]
    x = np.random.default_rng(0).normal(size=(2, LENGTH, 16))
    x = x.astype("float32")
    probs = keras.ops.convert_to_numpy(
        attention_probabilities(block, x, padding)
    )
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-5)
    if kind == "gpt_rotary_gqa":
        assert np.all(np.triu(probs[0, 0], 1) == 0)  # causal
    else:
        assert np.all(probs[0, :, :, 5:] < 1e-6)  # padded keys
    # probabilities @ values through the output projection give the layer's
    # own output.
    att = block.self_attention
    h = block.self_attention_norm(x) if block.normalization == "pre" else x
    qkv = keras.ops.convert_to_numpy(att.qkv_dense(h))
    qkv = qkv.reshape(2, LENGTH, -1, att.key_dim)
    v = qkv[:, :, att.num_heads + att._kv_heads :]
    v = np.repeat(v, att.num_heads // att._kv_heads, axis=2)
    mixed = np.einsum("bnts,bsnh->btnh", probs, v).reshape(2, LENGTH, -1)
    expected = att(h, padding_mask=padding, use_causal_mask=block.causal)
    np.testing.assert_allclose(att.output_dense(mixed), expected, atol=1e-5)


def test_attention_transfer_is_nonzero_and_decreases(trained_teacher):
    keras.utils.set_random_seed(0)
    student = _gpt(1, 8, heads=2)
    distiller = Distiller(
        trained_teacher, student, alpha=1.0, attention_layer_map={0: 1},
        attention_loss_weight=10.0,
    )  # fmt: skip
    # Eager: ten tiny steps run faster than tracing the step.
    distiller.compile(optimizer=keras.optimizers.Adam(3e-2), run_eagerly=True)
    tokens = _patterned_tokens(32)
    x, y = tokens[:, :-1], tokens[:, 1:]
    before = float(distiller.distillation_terms(x, y)["attention_loss"])
    history = distiller.fit(x, y, epochs=10, batch_size=32, verbose=0)
    after = float(distiller.distillation_terms(x, y)["attention_loss"])
    assert before > 1e-3
    assert after < 0.5 * before, (before, after)
    assert (
        history.history["attention_loss"][-1]
        < (history.history["attention_loss"][0])
    )

    mse = Distiller(
        trained_teacher, _gpt(1, 8, heads=4), attention_layer_map={0: 0},
        attention_loss="mse",
    )  # fmt: skip
    mse.compile()
    assert float(mse.distillation_terms(x, y)["attention_loss"]) > 0


def _count_calls(layer):
    counter = {"calls": 0}
    original = layer.call

    def counted(*args, **kwargs):
        counter["calls"] += 1
        return original(*args, **kwargs)

    layer.call = counted
    return counter


class _CallsPerEpoch(keras.callbacks.Callback):
    def __init__(self, counter):
        super().__init__()
        self.counter = counter
        self.per_epoch = []

    def on_epoch_begin(self, epoch, logs=None):
        self.start = self.counter["calls"]

    def on_epoch_end(self, epoch, logs=None):
        self.per_epoch.append(self.counter["calls"] - self.start)


@pytest.mark.parametrize("cache", [True, False])
def test_teacher_cache_runs_teacher_once(cache):
    teacher, student = _gpt(2, 16), _gpt(1, 8)
    counter = _count_calls(teacher.blocks[0])
    distiller = Distiller(
        teacher, student, hidden_layer_map={0: 1}, cache_teacher=cache
    )
    distiller.compile(optimizer="adam", run_eagerly=True)
    tokens = _patterned_tokens(16)
    callback = _CallsPerEpoch(counter)
    distiller.fit(
        tokens[:, :-1], tokens[:, 1:], epochs=3, batch_size=8, verbose=0,
        callbacks=[callback],
    )  # fmt: skip
    if cache:
        assert counter["calls"] > 0  # the first pass
        assert callback.per_epoch == [0, 0, 0]
        cached = distiller.teacher_cache
        assert cached["output"].dtype == np.float16
        assert cached["output"].shape == (16, LENGTH, VOCAB)
        assert cached["hidden_1"].shape == (16, LENGTH, 16)
    else:
        assert all(calls >= 2 for calls in callback.per_epoch)


def test_teacher_cache_from_dataset_matches_teacher():
    import tensorflow as tf

    teacher, student = _gpt(2, 16), _gpt(1, 8)
    tokens = _patterned_tokens(12)
    data = tf.data.Dataset.from_tensor_slices(
        (tokens[:, :-1], tokens[:, 1:])
    ).batch(4)
    distiller = Distiller(teacher, student, cache_teacher=True)
    distiller.compile()
    history = distiller.fit(data, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    np.testing.assert_allclose(
        distiller.teacher_cache["output"].astype("float32"),
        teacher(tokens[:, :-1]),
        atol=2e-2,
    )


def test_distillation_reduces_kl_to_teacher(trained_teacher):
    keras.utils.set_random_seed(0)
    student = _gpt(1, 8)
    tokens = _patterned_tokens(128, seed=3)
    x, y = tokens[:, :-1], tokens[:, 1:]
    teacher_logits = keras.ops.convert_to_numpy(trained_teacher(x))

    def kl_to_teacher():
        s = keras.ops.convert_to_numpy(student(x))
        return _kl(teacher_logits, s, 1.0).mean()

    before = kl_to_teacher()
    distiller = Distiller(
        trained_teacher, student, temperature=2.0, alpha=0.2,
        hidden_layer_map={0: 1}, cache_teacher=True,
    )  # fmt: skip
    distiller.compile(optimizer=keras.optimizers.Adam(1e-2))
    distiller.fit(x, y, epochs=6, batch_size=32, verbose=0)
    after = kl_to_teacher()
    assert after < 0.5 * before, (before, after)


def _bert(width, layers):
    return keras_llm.models.BERT(
        vocabulary_size=VOCAB, num_layers=layers, num_heads=2,
        hidden_dim=width, intermediate_dim=2 * width,
        max_sequence_length=LENGTH, dropout=0.0,
    )  # fmt: skip


def _bert_inputs(n, rng):
    token_ids = rng.integers(4, VOCAB, (n, LENGTH)).astype("int32")
    padding = np.ones((n, LENGTH), "int32")
    padding[:, 6:] = 0
    token_ids[:, 6:] = 0
    return {
        "token_ids": token_ids,
        "segment_ids": np.zeros((n, LENGTH), "int32"),
        "padding_mask": padding,
    }


# The next-sentence head is not distilled: Keras warns it gets no gradient.
@pytest.mark.filterwarnings("ignore:Gradients do not exist")
def test_mlm_variant_fits_one_step():
    rng = np.random.default_rng(0)
    teacher = keras_llm.models.BertPretrainer(_bert(16, 2))
    student = keras_llm.models.BertPretrainer(_bert(8, 1))
    x = _bert_inputs(4, rng)
    x["mask_positions"] = np.array([[1, 3, 0]] * 4, "int32")
    y = {
        "mlm": rng.integers(4, VOCAB, (4, 3)).astype("int32"),
        "nsp": np.zeros((4,), "int32"),
    }
    sw = {"mlm": np.array([[1, 1, 0]] * 4, "float32"), "nsp": np.ones(4)}
    distiller = Distiller(
        teacher, student, task="mlm", hidden_layer_map={0: 1},
        attention_layer_map={0: 1},
    )  # fmt: skip
    distiller.compile(optimizer="adam", run_eagerly=True)
    before = [w.numpy().copy() for w in student.backbone.weights]
    logs = distiller.train_on_batch(x, y, sample_weight=sw, return_dict=True)
    assert all(np.isfinite(v) for v in logs.values())
    assert logs["hidden_loss"] > 0 and logs["attention_loss"] > 0
    changed = [
        not np.allclose(b, w.numpy())
        for b, w in zip(before, student.backbone.weights)
    ]
    assert any(changed)
    # Only the masked slots count: the third (weight 0) slot is ignored.
    terms = distiller.distillation_terms(x, y, sample_weight=sw)
    y2 = {"mlm": y["mlm"].copy(), "nsp": y["nsp"]}
    y2["mlm"][:, 2] = (y2["mlm"][:, 2] + 1) % VOCAB
    terms2 = distiller.distillation_terms(x, y2, sample_weight=sw)
    np.testing.assert_allclose(
        terms["student_loss"], terms2["student_loss"], rtol=1e-6
    )
    with pytest.raises(ValueError, match="sample_weight"):
        distiller.distillation_terms(x, y)


def test_classification_variant_fits_one_step():
    rng = np.random.default_rng(0)
    teacher = build_task_model(_bert(16, 2), "classification", num_classes=3)
    student = build_task_model(_bert(8, 1), "classification", num_classes=3)
    x = _bert_inputs(8, rng)
    y = rng.integers(0, 3, (8,)).astype("int32")
    distiller = Distiller(
        teacher, student, task="classification", hidden_layer_map={0: 1},
        attention_layer_map={0: 1}, temperature=2.0,
    )  # fmt: skip
    assert len(distiller.hidden_projections) == 1
    distiller.compile(optimizer="adam", run_eagerly=True)
    history = distiller.fit(x, y, epochs=1, batch_size=8, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    assert history.history["hidden_loss"][0] > 0
    # The student view runs the student's own layers (shared weights).
    np.testing.assert_allclose(
        distiller.student_view(x)["output"], student(x), atol=1e-6
    )


def test_different_vocabularies_raise():
    teacher = _gpt(1, 8)
    student = keras_llm.models.GPT(
        vocabulary_size=VOCAB + 1, num_layers=1, num_heads=2, hidden_dim=8,
        max_sequence_length=LENGTH,
    )  # fmt: skip
    with pytest.raises(ValueError, match="vocabulary"):
        Distiller(teacher, student)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"task": "seq2seq"}, "task"),
        ({"attention_loss": "l1"}, "attention_loss"),
        ({"hidden_layer_map": {0: 5}}, "out of range"),
        ({"attention_layer_map": [(0,)]}, "attention_layer_map"),
        ({"temperature": 0.0}, "temperature"),
    ],
)
def test_bad_options_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Distiller(_gpt(2, 16), _gpt(1, 8), **kwargs)


def test_student_saves_and_loads_as_plain_model(tmp_path):
    teacher, student = _gpt(2, 16), _gpt(1, 8)
    tokens = _patterned_tokens(8)
    distiller = Distiller(
        teacher, student, hidden_layer_map={0: 1}, attention_layer_map={0: 0}
    )
    distiller.compile(optimizer="adam", run_eagerly=True)
    distiller.fit(tokens[:, :-1], tokens[:, 1:], epochs=1, verbose=0)
    path = tmp_path / "student.keras"
    distiller.student.save(path)
    loaded = keras.saving.load_model(path)
    assert type(loaded) is keras_llm.models.GPT
    assert len(loaded.weights) == len(student.weights)
    np.testing.assert_allclose(
        loaded(tokens[:, :-1]), student(tokens[:, :-1]), atol=1e-6
    )
