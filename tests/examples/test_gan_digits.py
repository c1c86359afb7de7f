import os
import runpy
import sys

import keras
import matplotlib.pyplot as plt
import numpy as np

EXAMPLE = os.path.join(
    os.path.dirname(__file__), "..", "..", "examples", "gan_digits.py"
)


def test_quick_run_trains_both_networks(tmp_path, monkeypatch, capsys):
    argv = ["--quick", "--out", str(tmp_path)]
    monkeypatch.setattr(sys, "argv", [EXAMPLE, *argv])
    results = runpy.run_path(EXAMPLE)["main"](argv)
    printed = capsys.readouterr().out
    assert "d_loss" in printed and "g_loss" in printed
    assert "written to" in printed

    # One PNG grid per epoch.
    expected = [os.path.join(tmp_path, f"epoch_{i:03d}.png") for i in (1, 2)]
    assert results["grid_paths"] == expected
    for path in expected:
        image = plt.imread(path)
        assert image.ndim == 3 and min(image.shape[:2]) > 100

    history = results["history"]
    assert len(history["d_loss"]) == len(history["g_loss"]) == 2
    assert np.all(np.isfinite(history["d_loss"] + history["g_loss"]))
    assert 0 < results["d_loss"] < 5 and 0 < results["g_loss"] < 10

    # The saved generator is the trained one: its digits on the fixed noise
    # are those of the end of training, and they moved away from the start.
    generator = keras.saving.load_model(results["generator_path"])
    after = generator.predict_on_batch(results["fixed_noise"])
    assert after.shape == (16, 28, 28, 1)
    assert np.all(np.abs(after) <= 1.0)
    np.testing.assert_allclose(after, results["images_after"], atol=1e-5)
    assert np.mean(np.abs(after - results["images_before"])) > 0.02


def test_generator_step_leaves_discriminator_alone():
    example = runpy.run_path(EXAMPLE)
    keras.utils.set_random_seed(1)
    generator = example["build_generator"]()
    discriminator = example["build_discriminator"]()
    assert discriminator.output_shape == (None, 1)
    gan = example["GAN"](generator, discriminator)
    # With a zero learning rate for the discriminator, only the generator's
    # half of train_step could change the discriminator: it must not.
    gan.compile(
        d_optimizer=keras.optimizers.Adam(learning_rate=0.0),
        g_optimizer=keras.optimizers.Adam(learning_rate=1e-3),
        loss_fn=keras.losses.BinaryCrossentropy(),
    )
    d_before = [w.copy() for w in discriminator.get_weights()]
    g_before = [w.copy() for w in generator.get_weights()]
    real = np.random.default_rng(0).uniform(-1, 1, (16, 28, 28, 1))
    gan.fit(real.astype("float32"), batch_size=8, epochs=1, verbose=0)
    for before, now in zip(d_before, discriminator.get_weights()):
        np.testing.assert_array_equal(before, now)
    assert any(
        not np.array_equal(b, a)
        for b, a in zip(g_before, generator.get_weights())
    )
