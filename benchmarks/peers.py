"""The keras-hub peer that the throughput benchmarks measure against."""

import keras
import keras_hub
from keras import ops


def keras_hub_gpt2_lm(
    vocabulary_size,
    num_layers,
    num_heads,
    hidden_dim,
    intermediate_dim,
    max_sequence_length,
):
    """keras-hub's `GPT2Backbone` with its tied embedding as the LM head.

    Takes `(batch, length)` token ids and returns float32 logits, like
    `keras_llm.models.GPT`, so both train with the same `fit` call. The
    model carries `num_layers` and `hidden_dim` for `ThroughputMeter`.
    """
    backbone = keras_hub.models.GPT2Backbone(
        vocabulary_size=vocabulary_size,
        num_layers=num_layers,
        num_heads=num_heads,
        hidden_dim=hidden_dim,
        intermediate_dim=intermediate_dim,
        dropout=0.0,
        max_sequence_length=max_sequence_length,
    )
    token_ids = keras.Input(shape=(None,), dtype="int32", name="token_ids")
    hidden = backbone(
        {"token_ids": token_ids, "padding_mask": ops.ones_like(token_ids)}
    )
    logits = ops.cast(backbone.token_embedding(hidden, reverse=True), "float32")
    model = keras.Model(token_ids, logits, name="keras_hub_gpt2")
    model.num_layers = num_layers
    model.hidden_dim = hidden_dim
    return model
