"""All of the training techniques at once, against the plain run.

The foundation's GPT trains with gradient accumulation + mixed_bfloat16 +
remat + warm-up-cosine AdamW under MirroredStrategy on 2 logical CPUs, and
its loss must fall like that of the plain run (float32, one device, no
accumulation, no remat, the update batch in one piece) on the same data.
"""

import keras
import numpy as np
import tensorflow as tf

from keras_llm.models import GPT
from keras_llm.optimizers import GradientAccumulation
from keras_llm.optimizers import for_pretraining
from keras_llm.pretraining import compile_for_clm

UPDATES, MICRO_BATCH, ACCUMULATE, T = 40, 8, 2, 16


def _data():
    """Sequences of a few repeating patterns: learnable in 40 updates."""
    rng = np.random.default_rng(0)
    periods = rng.integers(3, 7, size=UPDATES * MICRO_BATCH * ACCUMULATE)
    starts = rng.integers(0, 24, size=len(periods))
    rows = [(s + np.arange(T + 1) % p) % 24 for s, p in zip(starts, periods)]
    tokens = np.stack(rows).astype("int32")
    return tokens[:, :-1], tokens[:, 1:]


def _train(strategy, policy, remat, accumulate):
    keras.config.set_dtype_policy(policy)
    x, y = _data()
    with strategy.scope():
        keras.utils.set_random_seed(7)
        model = GPT(
            vocabulary_size=24,
            num_layers=2,
            num_heads=2,
            hidden_dim=32,
            max_sequence_length=T,
            remat=remat,
        )
        optimizer = for_pretraining(
            total_steps=UPDATES,
            learning_rate=1e-2,
            warmup_steps=4,
            accumulation_steps=accumulate,
        )
        compile_for_clm(model, optimizer, jit_compile=False)
    history = model.fit(
        x,
        y,
        batch_size=MICRO_BATCH * (ACCUMULATE // accumulate),
        shuffle=False,
        verbose=0,
    )
    return model, history.history["loss"][0], model.evaluate(x, y, verbose=0)


def test_accumulation_bf16_remat_cosine_adamw_mirrored_like_plain(
    mirrored_strategy,
):
    plain, _, (plain_loss, _) = _train(
        tf.distribute.get_strategy(), "float32", False, 1
    )
    model, _, (loss, _) = _train(
        mirrored_strategy, "mixed_bfloat16", True, ACCUMULATE
    )
    assert isinstance(model.optimizer, GradientAccumulation)
    assert int(keras.ops.convert_to_numpy(model.optimizer.iterations)) == (
        UPDATES
    )
    assert model.blocks[0].compute_dtype == "bfloat16"
    assert all(block.remat for block in model.blocks)
    initial = np.log(24)  # loss of a uniform guess over 24 tokens
    assert plain_loss < 0.5 * initial
    assert loss < 0.5 * initial
    assert abs(loss - plain_loss) < 0.1 * plain_loss, (loss, plain_loss)
