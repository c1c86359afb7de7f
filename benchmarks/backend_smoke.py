"""Checks the GPT on whatever Keras backend is active (JAX on a GPU without
TensorFlow, for example): cached generation equals a full recompute, a
`.keras` round trip keeps the outputs, a `fit` step under mixed_bfloat16
gives finite float32 logits. Prints one line per check; exits non-zero on a
failure. Not part of the test run (the tests need TensorFlow)."""

import os
import sys
import tempfile

import keras
import numpy as np

import keras_llm


def main():
    print("backend:", keras.backend.backend())
    model = keras_llm.models.GPT(
        vocabulary_size=50,
        num_layers=2,
        num_heads=4,
        hidden_dim=32,
        max_sequence_length=32,
        position_embedding="rotary",
    )
    prompt = [3, 1, 4, 1, 5]
    out = model.generate([prompt], max_length=16, sampler="greedy")[0]
    seq = list(prompt)
    while len(seq) < 16:
        logits = keras.ops.convert_to_numpy(model(np.array([seq], "int32")))
        seq.append(int(np.argmax(logits[0, -1])))
    assert out.tolist() == seq, (out.tolist(), seq)
    print("ok: cached greedy generation equals full recompute")

    x = np.random.default_rng(0).integers(0, 50, (4, 16)).astype("int32")
    before = keras.ops.convert_to_numpy(model(x))
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "gpt.keras")
        model.save(path)
        after = keras.ops.convert_to_numpy(keras.saving.load_model(path)(x))
    np.testing.assert_allclose(before, after, atol=1e-6)
    print("ok: .keras save/load keeps outputs")

    keras.config.set_dtype_policy("mixed_bfloat16")
    model = keras_llm.models.GPT(
        vocabulary_size=50, num_layers=2, num_heads=4, hidden_dim=32
    )
    model.compile(
        "adamw", keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    history = model.fit(x, x, epochs=3, verbose=0)
    logits = model(x)
    assert keras.backend.standardize_dtype(logits.dtype) == "float32"
    assert np.isfinite(history.history["loss"]).all()
    print(
        "ok: mixed_bfloat16 fit, float32 logits, loss", history.history["loss"]
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
