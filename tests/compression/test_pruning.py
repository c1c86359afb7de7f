"""Tests of keras_llm.compression.pruning.

The parity test runs tfmot on a tf_keras twin of each model in a subprocess
(`TF_USE_LEGACY_KERAS=1`, through our delegating functions) while the Keras 3
side runs here, and compares the masks after every training step.
"""

import gzip
import json
import os
import pathlib
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

import keras_llm
from keras_llm.compression import pruning

ROOT = pathlib.Path(__file__).resolve().parents[2]
SCHEDULE = dict(
    initial_sparsity=0.2, final_sparsity=0.7, begin_step=2, end_step=10
)
CASES = {
    "unstructured": dict(model="seq", block_size=(1, 1), n_m=None),
    "block": dict(model="mlp", block_size=(2, 4), n_m=None),
    "n_m": dict(model="mlp", block_size=(1, 1), n_m=(2, 4)),
}
EPOCHS, BATCH, SAMPLES = 3, 8, 32

# The tf_keras side: builds the twin, loads the same weights, prunes through
# keras_llm's delegating functions (which must hand over to tfmot), trains on
# the same batches and records tfmot's masks after every step.
TF_KERAS_SCRIPT = (
    textwrap.dedent(
        """
    import json, os, sys
    import numpy as np
    import tf_keras as K
    import tensorflow_model_optimization as tfmot
    from keras_llm.compression import pruning

    weights_path, data_path, out_path = sys.argv[1:4]
    cases = json.loads(sys.argv[4])
    schedule = json.loads(sys.argv[5])
    weights, data = np.load(weights_path), np.load(data_path)
    from tensorflow_model_optimization.python.core.sparsity.keras.pruning_wrapper import PruneLowMagnitude as wrapper_cls

    def build(kind):
        if kind == "seq":
            return K.Sequential([
                K.Input((6,), dtype="int32"),
                K.layers.Embedding(20, 8, name="emb"),
                K.layers.Conv1D(12, 3, name="conv"),
                K.layers.Flatten(name="flat"),
                K.layers.Dense(16, activation="relu", name="d1"),
                K.layers.Dense(4, name="d2"),
            ])
        return K.Sequential([
            K.Input((16,)),
            K.layers.Dense(32, activation="relu", name="d1"),
            K.layers.Dense(16, activation="relu", name="d2"),
            K.layers.Dense(8, name="d3"),
        ])

    class Record(K.callbacks.Callback):
        def __init__(self, wrappers):
            super().__init__()
            self.wrappers, self.steps = wrappers, []

        def on_train_batch_end(self, batch, logs=None):
            self.steps.append([
                K.backend.get_value(mask)
                for w in self.wrappers for _, mask, _ in w.pruning_vars
            ])

    out = {}
    for case, spec in cases.items():
        model = build(spec["model"])
        pruned = pruning.prune_low_magnitude(
            model,
            tfmot.sparsity.keras.PolynomialDecay(frequency=2, **schedule),
            block_size=tuple(spec["block_size"]),
            n_m=None if spec["n_m"] is None else tuple(spec["n_m"]),
        )
        wrappers = [l for l in pruned.layers if isinstance(l, wrapper_cls)]
        assert wrappers, "delegation did not use tfmot"
        for layer in pruned.layers:
            inner = getattr(layer, "layer", layer)
            prefix = f"{spec['model']}/{inner.name}__"
            n = sum(k.startswith(prefix) for k in weights.files)
            if n:
                inner.set_weights([weights[f"{prefix}{i}"] for i in range(n)])
        pruned.compile(K.optimizers.SGD(0.1), "mse")
        record = Record(wrappers)
        x, y = data[spec["model"] + "_x"], data[spec["model"] + "_y"]
        logs = f"{out_path}.{case}.logs"
        pruned.fit(x, y, batch_size=BATCH, epochs=EPOCHS, shuffle=False,
                   verbose=0, callbacks=[pruning.UpdatePruningStep(), record,
                                         pruning.PruningSummaries(logs)])
        assert os.listdir(os.path.join(logs, "metrics"))
        for step, masks in enumerate(record.steps):
            for i, mask in enumerate(masks):
                out[f"{case}__{step}__{i}"] = mask
        stripped = pruning.strip_pruning(pruned)
        assert not any(isinstance(l, wrapper_cls) for l in stripped.layers)
    np.savez(out_path, **out)
    """
    )
    .replace("BATCH", str(BATCH))
    .replace("EPOCHS", str(EPOCHS))
)


def _keras3_model(kind):
    if kind == "seq":
        return keras.Sequential(
            [
                keras.Input((6,), dtype="int32"),
                keras.layers.Embedding(20, 8, name="emb"),
                keras.layers.Conv1D(12, 3, name="conv"),
                keras.layers.Flatten(name="flat"),
                keras.layers.Dense(16, activation="relu", name="d1"),
                keras.layers.Dense(4, name="d2"),
            ]
        )
    return keras.Sequential(
        [
            keras.Input((16,)),
            keras.layers.Dense(32, activation="relu", name="d1"),
            keras.layers.Dense(16, activation="relu", name="d2"),
            keras.layers.Dense(8, name="d3"),
        ]
    )


class _Record(keras.callbacks.Callback):
    def __init__(self, wrapper):
        super().__init__()
        self.wrapper, self.steps = wrapper, []

    def on_train_batch_end(self, batch, logs=None):
        self.steps.append(
            [
                keras.ops.convert_to_numpy(mask)
                for _, mask in self.wrapper.pruned_weights
            ]
        )


def _schedule(**overrides):
    sparsity = pruning._tfmot_sparsity()  # keeps TF_USE_LEGACY_KERAS as is
    return sparsity.PolynomialDecay(frequency=2, **{**SCHEDULE, **overrides})


def _kept(size, sparsity):
    """tfmot's number of weights kept at `sparsity` (float32 arithmetic)."""
    keep = np.float32(size) * (np.float32(1.0) - np.float32(sparsity))
    return int(max(np.round(keep), 1))


def test_masks_match_tfmot_at_every_step(tmp_path):
    rng = np.random.default_rng(0)
    models = {kind: _keras3_model(kind) for kind in ("seq", "mlp")}
    weights = {
        f"{kind}/{layer.name}__{i}": value
        for kind, model in models.items()
        for layer in model.layers
        for i, value in enumerate(layer.get_weights())
    }
    data = {
        "seq_x": rng.integers(0, 20, (SAMPLES, 6)).astype("int32"),
        "seq_y": rng.normal(size=(SAMPLES, 4)).astype("float32"),
        "mlp_x": rng.normal(size=(SAMPLES, 16)).astype("float32"),
        "mlp_y": rng.normal(size=(SAMPLES, 8)).astype("float32"),
    }
    np.savez(tmp_path / "weights.npz", **weights)
    np.savez(tmp_path / "data.npz", **data)
    (tmp_path / "ref.py").write_text(TF_KERAS_SCRIPT)
    env = dict(
        os.environ,
        TF_USE_LEGACY_KERAS="1",
        PYTHONPATH=str(ROOT),
        CUDA_VISIBLE_DEVICES="",
        TF_CPP_MIN_LOG_LEVEL="2",
    )
    # The tf_keras reference runs while the Keras 3 side trains here.
    reference_run = subprocess.Popen(
        [
            sys.executable,
            str(tmp_path / "ref.py"),
            str(tmp_path / "weights.npz"),
            str(tmp_path / "data.npz"),
            str(tmp_path / "reference.npz"),
            json.dumps(CASES),
            json.dumps(SCHEDULE),
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )

    ours = {}
    for case, spec in CASES.items():
        kind = spec["model"]
        model = _keras3_model(kind)
        model.set_weights(models[kind].get_weights())
        pruned = pruning.prune_low_magnitude(
            model,
            _schedule(),
            block_size=spec["block_size"],
            n_m=spec["n_m"],
        )
        pruned.compile(keras.optimizers.SGD(0.1), "mse")
        record = _Record(pruned)
        pruned.fit(
            data[kind + "_x"],
            data[kind + "_y"],
            batch_size=BATCH,
            epochs=EPOCHS,
            shuffle=False,
            verbose=0,
            callbacks=[pruning.UpdatePruningStep(), record],
        )
        ours[case] = (pruned, record.steps)

    log, _ = reference_run.communicate(timeout=300)
    assert reference_run.returncode == 0, log[-3000:]
    reference = np.load(tmp_path / "reference.npz")

    steps = EPOCHS * SAMPLES // BATCH
    for case, (pruned, recorded) in ours.items():
        assert len(recorded) == steps
        n_masks = len(pruned.pruned_weights)
        assert n_masks == (4 if case == "unstructured" else 3)
        for step in range(steps):
            for i in range(n_masks):
                expected = reference[f"{case}__{step}__{i}"]
                np.testing.assert_array_equal(
                    recorded[step][i],
                    expected,
                    err_msg=f"{case}: mask {i} differs at step {step + 1}",
                )
        # Pruning happened, and the kernels carry the final masks.
        for kernel, mask in pruned.pruned_weights:
            mask = keras.ops.convert_to_numpy(mask)
            kernel = keras.ops.convert_to_numpy(kernel)
            assert mask.mean() < 0.9
            assert np.all(kernel[mask == 0] == 0)
    # Unstructured: the final sparsity is the schedule's target.
    for kernel, mask in ours["unstructured"][0].pruned_weights:
        size = int(np.prod(kernel.shape))
        kept = int(keras.ops.convert_to_numpy(mask).sum())
        assert kept == _kept(size, SCHEDULE["final_sparsity"])


def _fit(pruned, x, y, steps=2, callbacks=None):
    pruned.compile(keras.optimizers.SGD(0.05), "mse")
    pruned.fit(
        x,
        y,
        batch_size=len(x) // steps,
        epochs=1,
        verbose=0,
        callbacks=callbacks or [pruning.UpdatePruningStep()],
    )


def test_block_and_n_m_structure_on_dense_conv_and_einsum():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(16, 8, 8)).astype("float32")
    y = rng.normal(size=(16, 8, 8)).astype("float32")

    def model():
        return keras.Sequential(
            [
                keras.Input((8, 8)),
                keras.layers.Conv1D(16, 3, padding="same", name="conv"),
                keras.layers.EinsumDense(
                    "btc,cd->btd", output_shape=(None, 12), name="einsum"
                ),
                keras.layers.Dense(8, name="dense"),
            ]
        )

    block = pruning.prune_low_magnitude(model(), 0.5, block_size=(1, 4))
    _fit(block, x, y)
    for _, mask in block.pruned_weights:
        mask = keras.ops.convert_to_numpy(mask)
        matrix = mask.reshape(-1, mask.shape[-1])
        groups = matrix.reshape(matrix.shape[0], -1, 4)
        # Every 1x4 block is all kept or all pruned, about half of them.
        assert np.all(groups.min(-1) == groups.max(-1))
        assert 0.4 <= 1 - mask.mean() <= 0.6

    nm = pruning.prune_low_magnitude(model(), 0.5, n_m=(1, 4))
    _fit(nm, x, y)
    axes = {"conv": 1, "einsum": 0, "dense": 0}  # input-channel axis
    report = {r["weight"]: r for r in pruning.sparsity_report(nm)}
    for layer, kernel, _, _, axis in nm._entries.items:
        assert axis == axes[layer.name]
        values = keras.ops.convert_to_numpy(kernel)
        moved = np.moveaxis(values, axis, -1)
        groups = moved.reshape(-1, moved.shape[-1] // 4, 4)
        assert np.all(np.count_nonzero(groups, axis=-1) <= 1)
        assert report[kernel.path]["sparsity"] >= 0.75


def test_bad_input_errors():
    dense = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    with pytest.raises(ValueError, match=r"sparsity in \[0, 1\).*1.0"):
        pruning.prune_low_magnitude(dense, 1.0)
    with pytest.raises(ValueError, match="must be in range"):
        _schedule(final_sparsity=1.2)  # tfmot's own check
    with pytest.raises(ValueError, match="block_size"):
        pruning.prune_low_magnitude(dense, 0.5, block_size=(0, 4))
    with pytest.raises(ValueError, match="N < M"):
        pruning.prune_low_magnitude(dense, 0.5, n_m=(4, 4))
    with pytest.raises(ValueError, match="unsupported"):
        pruning.prune_low_magnitude(dense, 0.5, unsupported="ignore")
    with pytest.raises(TypeError, match="Keras 3"):
        pruning.prune_low_magnitude("model", 0.5)
    with pytest.raises(ValueError, match="no prunable weights"):
        pruning.prune_low_magnitude(
            keras.Sequential([keras.Input((4,)), keras.layers.ReLU()]), 0.5
        )

    rnn = keras.Sequential(
        [
            keras.Input((3, 4)),
            keras.layers.SimpleRNN(5, name="my_rnn"),
            keras.layers.Dense(2, name="head"),
        ]
    )
    with pytest.raises(ValueError, match="SimpleRNNCell.*my_rnn"):
        pruning.prune_low_magnitude(rnn, 0.5)
    skipped = pruning.prune_low_magnitude(rnn, 0.5, unsupported="skip")
    assert [v.path for v, _ in skipped.pruned_weights] == [
        rnn.get_layer("head").kernel.path
    ]

    class BadSchedule:
        def __call__(self, step):
            return True, 1.5

    pruned = pruning.prune_low_magnitude(dense, BadSchedule())
    pruned.compile("sgd", "mse")
    x, y = np.ones((2, 4)), np.ones((2, 2))
    with pytest.raises(ValueError, match="needs the Keras 3 pruning callback"):
        pruned.fit(x, y, verbose=0)
    with pytest.raises(ValueError, match="sparsity 1.5 at step 1"):
        pruned.fit(x, y, verbose=0, callbacks=[pruning.UpdatePruningStep()])
    with pytest.raises(ValueError, match="already pruned"):
        pruning.prune_low_magnitude(
            keras.Sequential(
                [
                    keras.Input((4,)),
                    pruning.prune_low_magnitude(keras.layers.Dense(2), 0.5),
                ]
            ),
            0.5,
        )


def _gzip_size(path):
    return len(gzip.compress(pathlib.Path(path).read_bytes(), 9))


def test_strip_save_load_and_gzip_size(tmp_path):
    rng = np.random.default_rng(2)
    x = rng.normal(size=(32, 128)).astype("float32")
    y = rng.normal(size=(32, 64)).astype("float32")
    model = keras.Sequential(
        [
            keras.Input((128,)),
            keras.layers.Dense(256, activation="relu", name="d1"),
            keras.layers.Dense(64, name="d2"),
        ]
    )
    model.save_weights(tmp_path / "dense.weights.h5")
    pruned = pruning.prune_low_magnitude(
        model, _schedule(begin_step=0, end_step=4)
    )
    _fit(
        pruned,
        x,
        y,
        steps=4,
        callbacks=[
            pruning.UpdatePruningStep(),
            pruning.PruningSummaries(tmp_path / "logs"),
        ],
    )
    assert list((tmp_path / "logs" / "metrics").iterdir())

    # A pruned model saves with its masks and step, and resumes.
    pruned.save(tmp_path / "pruned.keras")
    loaded = keras.saving.load_model(tmp_path / "pruned.keras")
    assert isinstance(loaded, pruning.PruneLowMagnitude)
    assert int(keras.ops.convert_to_numpy(loaded.pruning_step)) == 4
    for (_, a), (_, b) in zip(pruned.pruned_weights, loaded.pruned_weights):
        np.testing.assert_array_equal(
            keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b)
        )
    np.testing.assert_allclose(loaded.predict(x, verbose=0), pruned(x))
    loaded.fit(
        x,
        y,
        batch_size=8,
        verbose=0,
        callbacks=[pruning.UpdatePruningStep()],
    )
    assert int(keras.ops.convert_to_numpy(loaded.pruning_step)) == 8

    # Stripped: the plain Sequential, no masks, zeros in place.
    plain = pruning.strip_pruning(pruned)
    assert type(plain) is keras.Sequential and plain is model
    assert not any("mask" in w.path for w in plain.weights)
    sparsity = {
        r["layer"]: r["sparsity"] for r in pruning.sparsity_report(plain)
    }
    d1_kept = _kept(128 * 256, SCHEDULE["final_sparsity"])
    assert sparsity["d1"] == pytest.approx(1 - d1_kept / (128 * 256))
    plain.save(tmp_path / "plain.keras")
    reloaded = keras.saving.load_model(tmp_path / "plain.keras")
    assert type(reloaded) is keras.Sequential
    np.testing.assert_allclose(reloaded.predict(x, verbose=0), plain(x))

    # gzip: 70% zeros leave at most ~0.45 of the dense weights' gzip size
    # (0.3 of the values kept, plus the cost of coding where the zeros are).
    plain.save_weights(tmp_path / "pruned.weights.h5")
    ratio = _gzip_size(tmp_path / "pruned.weights.h5") / _gzip_size(
        tmp_path / "dense.weights.h5"
    )
    assert ratio <= 0.45, ratio


def test_gpt_prunes_trains_saves_and_strips(tmp_path):
    gpt = keras_llm.models.GPT(
        vocabulary_size=32,
        num_layers=1,
        num_heads=2,
        hidden_dim=16,
        max_sequence_length=8,
        position_embedding="learned",
    )
    tokens = np.random.default_rng(3).integers(0, 32, (8, 8))
    pruned = pruning.prune_low_magnitude(gpt, 0.5)
    pruned.compile(
        "adam",
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    pruned.fit(
        tokens[:, :-1],
        tokens[:, 1:],
        batch_size=4,
        epochs=1,
        verbose=0,
        callbacks=[pruning.UpdatePruningStep()],
    )
    rows = pruning.sparsity_report(pruned)
    names = {r["layer"] for r in rows}
    # Token embedding, attention and feed-forward kernels; the learned
    # position table stays dense.
    assert "token_embedding" in names and "position_embedding" not in names
    assert len(rows) >= 5
    for row in rows:
        assert row["sparsity"] == pytest.approx(0.5, abs=0.01), row

    pruned.save(tmp_path / "gpt_pruned.keras")
    loaded = keras.saving.load_model(tmp_path / "gpt_pruned.keras")
    np.testing.assert_allclose(
        loaded.predict(tokens, verbose=0), pruned(tokens), atol=1e-5
    )
    plain = pruning.strip_pruning(loaded)
    assert type(plain) is keras_llm.models.GPT
    plain.save(tmp_path / "gpt.keras")
    again = keras.saving.load_model(tmp_path / "gpt.keras")
    assert [r["sparsity"] for r in pruning.sparsity_report(again)] == [
        r["sparsity"] for r in rows
    ]
    out = again.generate([[1, 2]], max_length=4, sampler="greedy")
    assert np.asarray(out).shape[-1] == 4
