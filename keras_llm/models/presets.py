"""Named model sizes: GPT sizes from CPU demos to the GPT-2 small shape, and
BERT sizes from CPU demos to the BERT-base shape.

The small GPT presets use rotary positions: on nanoGPT's baby-GPT benchmark they
reach a validation loss of 1.77 after 2000 steps where learned positions
reach 1.89 (benchmarks/clm_throughput.py). `gpt2-small` keeps GPT-2's
learned positions.
"""

import copy

GPT_PRESETS = {
    # A few hundred thousand parameters: trains in minutes on 2 CPU cores.
    "nano": dict(
        num_layers=4,
        num_heads=4,
        hidden_dim=128,
        intermediate_dim=512,
        max_sequence_length=256,
        position_embedding="rotary",
    ),
    # nanoGPT's shakespeare-char model (about 10.7M parameters).
    "mini": dict(
        num_layers=6,
        num_heads=6,
        hidden_dim=384,
        intermediate_dim=1536,
        max_sequence_length=256,
        position_embedding="rotary",
    ),
    "small": dict(
        num_layers=8,
        num_heads=8,
        hidden_dim=512,
        intermediate_dim=2048,
        max_sequence_length=512,
        position_embedding="rotary",
    ),
    # The GPT-2 small shape (124M parameters with GPT-2's 50257 tokens).
    "gpt2-small": dict(
        num_layers=12,
        num_heads=12,
        hidden_dim=768,
        intermediate_dim=3072,
        max_sequence_length=1024,
        vocabulary_size=50257,
    ),
}


def get_preset(name):
    """Returns a copy of the keyword arguments of a named GPT size.

    Args:
        name: one of `keras_llm.models.presets.GPT_PRESETS`.

    Raises:
        ValueError: for an unknown name, listing the known ones.
    """
    if name not in GPT_PRESETS:
        raise ValueError(
            f"Unknown preset {name!r}. Expected one of {sorted(GPT_PRESETS)}."
        )
    return copy.deepcopy(GPT_PRESETS[name])


# BERT sizes. Every one but `bert_base` leaves `vocabulary_size` to the
# tokenizer (pass it as an override). The small ones follow Turc et al.,
# 2019 (BERT-Tiny/Mini/Small); `bert_nano` is a seconds-on-CPU demo size.
BERT_PRESETS = {
    "bert_nano": dict(
        num_layers=2,
        num_heads=2,
        hidden_dim=64,
        intermediate_dim=256,
        max_sequence_length=128,
    ),
    "bert_tiny": dict(
        num_layers=2,
        num_heads=2,
        hidden_dim=128,
        intermediate_dim=512,
        max_sequence_length=512,
    ),
    "bert_mini": dict(
        num_layers=4,
        num_heads=4,
        hidden_dim=256,
        intermediate_dim=1024,
        max_sequence_length=512,
    ),
    "bert_small": dict(
        num_layers=4,
        num_heads=8,
        hidden_dim=512,
        intermediate_dim=2048,
        max_sequence_length=512,
    ),
    # The BERT-base shape (110M parameters with its 30522 WordPiece tokens).
    "bert_base": dict(
        num_layers=12,
        num_heads=12,
        hidden_dim=768,
        intermediate_dim=3072,
        max_sequence_length=512,
        vocabulary_size=30522,
    ),
}


def get_bert_preset(name):
    """Returns a copy of the keyword arguments of a named BERT size.

    Args:
        name: one of `keras_llm.models.presets.BERT_PRESETS`.

    Raises:
        ValueError: for an unknown name, listing the known ones.
    """
    if name not in BERT_PRESETS:
        raise ValueError(
            f"Unknown BERT preset {name!r}. Expected one of "
            f"{sorted(BERT_PRESETS)}."
        )
    return copy.deepcopy(BERT_PRESETS[name])


# Encoder-decoder sizes for `keras_llm.models.EncoderDecoder.from_preset`.
ENCODER_DECODER_PRESETS = {
    # A CPU-sized seq2seq model (about 0.8M parameters besides embeddings).
    "seq2seq_nano": dict(
        num_encoder_layers=2,
        num_decoder_layers=2,
        num_heads=4,
        hidden_dim=128,
        intermediate_dim=512,
        max_sequence_length=256,
    ),
    # The base model of Vaswani et al. (2017): 6 + 6 post-LN layers, ReLU,
    # dropout 0.1, one shared embedding (learned positions here).
    "transformer_base": dict(
        num_encoder_layers=6,
        num_decoder_layers=6,
        num_heads=8,
        hidden_dim=512,
        intermediate_dim=2048,
        max_sequence_length=512,
        activation="relu",
        dropout=0.1,
        normalization="post",
    ),
}
