import keras
import numpy as np

from keras_llm.models import GPT
from keras_llm.optimizers import NO_DECAY_NAMES
from keras_llm.optimizers import AdamW


def _decayed(optimizer, model):
    return sorted(
        {
            v.name
            for v in model.trainable_variables
            if optimizer._use_weight_decay(v)
        }
    )


def test_no_decay_on_biases_norms_and_embeddings_even_after_loading(tmp_path):
    model = GPT(
        vocabulary_size=12,
        num_layers=1,
        num_heads=2,
        hidden_dim=8,
        max_sequence_length=8,
        tie_embeddings=False,
    )
    optimizer = AdamW(
        learning_rate=1e-2, weight_decay=0.5, no_decay_names=NO_DECAY_NAMES
    )
    model.compile(
        optimizer=optimizer,
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    x = np.random.default_rng(0).integers(0, 12, (4, 8)).astype("int32")
    model.fit(x, x, verbose=0)
    assert _decayed(optimizer, model) == ["kernel", "reverse_embeddings"]
    # Keras' own exclusions are not in its config; ours survive a save.
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    assert isinstance(loaded.optimizer, AdamW)
    assert loaded.optimizer.no_decay_names == list(NO_DECAY_NAMES)
    assert _decayed(loaded.optimizer, loaded) == [
        "kernel",
        "reverse_embeddings",
    ]


def test_excluded_variables_are_not_decayed():
    decayed = keras.Variable(np.ones(2, "float32"), name="kernel")
    kept = keras.Variable(np.ones(2, "float32"), name="bias")
    optimizer = AdamW(
        learning_rate=0.1, weight_decay=0.5, no_decay_names=NO_DECAY_NAMES
    )
    zeros = np.zeros(2, "float32")
    optimizer.apply([zeros, zeros], [decayed, kept])
    np.testing.assert_allclose(decayed.numpy(), 0.95)
    np.testing.assert_allclose(kept.numpy(), 1.0)


def test_bert_pretrainer_decays_only_matmul_weights():
    from keras_llm.models import BERT
    from keras_llm.models import BertPretrainer

    backbone = BERT(
        vocabulary_size=20,
        num_layers=1,
        num_heads=2,
        hidden_dim=8,
        max_sequence_length=8,
    )
    model = BertPretrainer(backbone)
    optimizer = AdamW(weight_decay=0.1, no_decay_names=NO_DECAY_NAMES)
    optimizer.build(model.trainable_variables)
    decayed = {
        v.path.split("/")[-1]
        for v in model.trainable_variables
        if optimizer._use_weight_decay(v)
    }
    # The MLM head's output bias, the segment and position tables and the
    # norms are excluded; only kernels decay.
    assert decayed == {"kernel"}
