"""Named GPT sizes, from CPU demos to the GPT-2 small shape.

The small presets use rotary positions: on nanoGPT's baby-GPT benchmark they
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
