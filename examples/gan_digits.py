"""A GAN that generates handwritten digits, with the tutorial's generator and
discriminator and a real adversarial training loop.

The generator maps 100-d Gaussian noise through Dense(128, relu) and
Dense(784, tanh) to a 28x28x1 image; the discriminator is two 5x5
convolutions (64 and 128 filters) with max pooling and a sigmoid output. A
`keras.Model` subclass, `GAN`, holds both and overrides `train_step`: each
batch first trains the discriminator on real images (label 1) and generated
ones (label 0), then trains the generator through the discriminator (whose
weights it does not update) to make the discriminator answer 1. `fit` shows
the two losses, `d_loss` and `g_loss`, in its progress bar; a callback saves
a grid of digits generated from the same fixed noise after every epoch.

What was wrong in the tutorial's printed snippet, and what changed here:

* the discriminator had no `Flatten` before its `Dense(1)`, so it output a
  7x7 map of scores instead of one score per image; `Flatten` is added;
* `Adam(lr=...)`: the argument is `learning_rate` (`Adam(learning_rate=2e-4,
  beta_1=0.5)` here, one optimizer per network);
* `compile(..., trainable=False)` is not a `compile` argument, and compiling
  the two networks separately never trains them against each other; the
  adversarial loop is the `GAN.train_step` below (the discriminator is
  "frozen" for the generator's update by applying gradients to the
  generator's weights only);
* the generator ends in `tanh`, whose range is [-1, 1], so the real images
  are scaled from [0, 1] to [-1, 1] to match;
* two standard stabilizers are added to the loop: one-sided label smoothing
  (`--label-smoothing`, real images aimed at 0.9) and instance noise
  (`--instance-noise`, Gaussian noise on every image the discriminator
  sees), because this small generator is easily overpowered by the
  convolutional discriminator;
* there was no data and no training; the digits are
  `keras_llm.data.digits.load_digits` (scikit-learn's handwritten digits
  resized to 28x28, or an MNIST `.npz` given with `--data`).

Expect digit-shaped strokes, not a variety of digits: this generator (one
hidden layer of 128 units) on 1,438 small digits collapses to one or two
modes (the printed "spread across samples" compares the variety of its
digits with that of real ones). A larger generator, or MNIST with `--data`,
may give more variety (not tried here); the tutorial's architecture is kept.

Outputs in `--out`: `epoch_000.png` (before training), `epoch_001.png`, ...
(the digits generated from the fixed noise after each epoch) and
`generator.keras` (the trained generator).

    python examples/gan_digits.py                    # scikit-learn digits
    python examples/gan_digits.py --data mnist.npz --epochs 20
    python examples/gan_digits.py --quick            # seconds
"""

import argparse
import math
import os
import time

import keras
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from rich.console import Console  # noqa: E402

from keras_llm.data.digits import load_digits  # noqa: E402

LATENT_DIM = 100


def build_generator(latent_dim=LATENT_DIM):
    """Noise `(batch, latent_dim)` -> images `(batch, 28, 28, 1)` in
    [-1, 1]."""
    return keras.Sequential(
        [
            keras.Input(shape=(latent_dim,)),
            keras.layers.Dense(128, activation="relu"),
            keras.layers.Dense(784, activation="tanh"),
            keras.layers.Reshape((28, 28, 1)),
        ],
        name="generator",
    )


def build_discriminator():
    """Images `(batch, 28, 28, 1)` -> probability `(batch, 1)` that each is
    real."""
    return keras.Sequential(
        [
            keras.Input(shape=(28, 28, 1)),
            keras.layers.Conv2D(64, (5, 5), padding="same", activation="relu"),
            keras.layers.MaxPooling2D((2, 2)),
            keras.layers.Conv2D(128, (5, 5), padding="same", activation="relu"),
            keras.layers.MaxPooling2D((2, 2)),
            keras.layers.Flatten(),
            keras.layers.Dense(1, activation="sigmoid"),
        ],
        name="discriminator",
    )


class GAN(keras.Model):
    """A generator and a discriminator trained against each other by `fit`.

    `fit` takes batches of real images in [-1, 1] (no labels).
    """

    def __init__(
        self,
        generator,
        discriminator,
        latent_dim=LATENT_DIM,
        label_smoothing=0.0,
        instance_noise=0.0,
        seed=0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.generator = generator
        self.discriminator = discriminator
        self.latent_dim = latent_dim
        self.label_smoothing = label_smoothing
        self.instance_noise = instance_noise
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.d_loss_tracker = keras.metrics.Mean(name="d_loss")
        self.g_loss_tracker = keras.metrics.Mean(name="g_loss")

    def compile(self, d_optimizer, g_optimizer, loss_fn):
        super().compile()
        self.d_optimizer = d_optimizer
        self.g_optimizer = g_optimizer
        self.loss_fn = loss_fn

    @property
    def metrics(self):
        # Listed here, the trackers are reset at the start of every epoch.
        return [self.d_loss_tracker, self.g_loss_tracker]

    def call(self, noise, training=False):
        return self.generator(noise, training=training)

    def _judge(self, images, training):
        # Instance noise: the discriminator sees every image, real or fake,
        # through a little Gaussian noise, so it cannot win on pixel details
        # the generator has no way to match yet.
        if self.instance_noise:
            images = images + self.instance_noise * keras.random.normal(
                tf.shape(images), seed=self.seed_generator
            )
        return self.discriminator(images, training=training)

    def train_step(self, data):
        real, _, _ = keras.utils.unpack_x_y_sample_weight(data)
        batch_size = tf.shape(real)[0]

        # 1. The discriminator, on real images (label 1, less the smoothing)
        # and fakes (label 0).
        noise = keras.random.normal(
            (batch_size, self.latent_dim), seed=self.seed_generator
        )
        fake = self.generator(noise, training=False)
        images = tf.concat([real, fake], axis=0)
        # One-sided label smoothing: real images are aimed at 1 - smoothing.
        labels = tf.concat(
            [
                tf.fill((batch_size, 1), 1.0 - self.label_smoothing),
                tf.zeros((batch_size, 1)),
            ],
            axis=0,
        )
        with tf.GradientTape() as tape:
            predictions = self._judge(images, training=True)
            d_loss = self.loss_fn(labels, predictions)
        weights = self.discriminator.trainable_weights
        grads = tape.gradient(d_loss, weights)
        self.d_optimizer.apply_gradients(zip(grads, weights))

        # 2. The generator, through the discriminator: it wants the label 1
        # on its fakes. Only the generator's weights get gradients, so the
        # discriminator stays as it is for this half of the step.
        noise = keras.random.normal(
            (batch_size, self.latent_dim), seed=self.seed_generator
        )
        with tf.GradientTape() as tape:
            predictions = self._judge(
                self.generator(noise, training=True), training=False
            )
            g_loss = self.loss_fn(tf.ones((batch_size, 1)), predictions)
        weights = self.generator.trainable_weights
        grads = tape.gradient(g_loss, weights)
        self.g_optimizer.apply_gradients(zip(grads, weights))

        self.d_loss_tracker.update_state(d_loss)
        self.g_loss_tracker.update_state(g_loss)
        return {m.name: m.result() for m in self.metrics}


def save_grid(images, path, title=None):
    """Writes images in [-1, 1] `(n, 28, 28, 1)` as one square PNG grid."""
    images = (np.asarray(images)[..., 0] + 1.0) / 2.0
    n = len(images)
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    size = images.shape[1]
    grid = np.ones((rows * (size + 2), cols * (size + 2)), "float32")
    for i, image in enumerate(images):
        r, c = divmod(i, cols)
        y, x = r * (size + 2) + 1, c * (size + 2) + 1
        grid[y : y + size, x : x + size] = image
    fig, ax = plt.subplots(figsize=(cols * 0.6 + 0.4, rows * 0.6 + 0.6))
    ax.imshow(grid, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    ax.axis("off")
    if title:
        ax.set_title(title)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


class DigitGrid(keras.callbacks.Callback):
    """After each epoch, saves `epoch_NNN.png`: the generator's digits for
    one fixed batch of noise, so the epochs can be compared."""

    def __init__(self, generator, noise, folder):
        super().__init__()
        self.generator = generator
        self.noise = noise
        self.folder = folder
        self.paths = []

    def on_epoch_end(self, epoch, logs=None):
        images = self.generator.predict_on_batch(self.noise)
        path = os.path.join(self.folder, f"epoch_{epoch + 1:03d}.png")
        save_grid(images, path, title=f"epoch {epoch + 1}")
        self.paths.append(path)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data", default=None, help="MNIST .npz (default: scikit-learn digits)"
    )
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument(
        "--samples", type=int, default=25, help="digits in each epoch's grid"
    )
    parser.add_argument(
        "--label-smoothing",
        type=float,
        default=0.1,
        help="real images' target is 1 minus this",
    )
    parser.add_argument(
        "--instance-noise",
        type=float,
        default=0.2,
        help="std of the noise added to D's inputs",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=os.path.join("runs", "gan_digits"))
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--quick", action="store_true", help="tiny, seconds")
    args = parser.parse_args(argv)
    keras.utils.set_random_seed(args.seed)
    console = Console()
    start = time.perf_counter()

    (x_train, _), _ = load_digits(args.data)
    if args.quick:
        args.epochs, args.batch_size, args.samples = 2, 32, 16
        x_train = x_train[:256]
    images = x_train * 2.0 - 1.0  # [0, 1] -> [-1, 1], tanh's range
    dataset = (
        tf.data.Dataset.from_tensor_slices(images)
        .shuffle(len(images), seed=args.seed)
        .batch(args.batch_size, drop_remainder=True)
        .prefetch(tf.data.AUTOTUNE)
    )
    steps = len(images) // args.batch_size
    console.print(
        f"{len(images):,} training digits of {images.shape[1:]}, scaled to "
        f"[{images.min():.0f}, {images.max():.0f}]; {args.epochs} epoch(s) of "
        f"{steps} steps, batch {args.batch_size}"
    )

    generator = build_generator()
    discriminator = build_discriminator()
    for net in (generator, discriminator):
        console.print(f"{net.name}: {net.count_params():,} parameters")
    gan = GAN(
        generator,
        discriminator,
        label_smoothing=args.label_smoothing,
        instance_noise=args.instance_noise,
        seed=args.seed,
    )
    gan.compile(
        d_optimizer=keras.optimizers.Adam(learning_rate=2e-4, beta_1=0.5),
        g_optimizer=keras.optimizers.Adam(learning_rate=2e-4, beta_1=0.5),
        loss_fn=keras.losses.BinaryCrossentropy(),
    )

    os.makedirs(args.out, exist_ok=True)
    fixed_noise = (
        np.random.default_rng(args.seed)
        .standard_normal((args.samples, LATENT_DIM))
        .astype("float32")
    )
    images_before = generator.predict_on_batch(fixed_noise)
    save_grid(
        images_before,
        os.path.join(args.out, "epoch_000.png"),
        title="before training",
    )
    grid = DigitGrid(generator, fixed_noise, args.out)
    history = gan.fit(
        dataset,
        epochs=args.epochs,
        callbacks=[grid],
        shuffle=False,  # the dataset shuffles itself
        verbose=0 if args.quiet else 1,
    )
    train_seconds = time.perf_counter() - start
    d_loss = float(history.history["d_loss"][-1])
    g_loss = float(history.history["g_loss"][-1])
    images_after = generator.predict_on_batch(fixed_noise)
    # How the discriminator sees real digits and the generator's, at the end.
    real_score = float(np.mean(discriminator.predict_on_batch(images[:256])))
    fake_score = float(np.mean(discriminator.predict_on_batch(images_after)))
    # Spread of the generated digits across the fixed noise (per-pixel std,
    # averaged), next to that of real digits: near 0 means the generator
    # makes the same image whatever the noise (mode collapse).
    fake_spread = float(np.mean(np.std(images_after, axis=0)))
    real_spread = float(np.mean(np.std(images[: args.samples], axis=0)))
    console.print(
        f"final epoch: d_loss {d_loss:.3f}, g_loss {g_loss:.3f}; the "
        f"discriminator (without instance noise) gives real digits "
        f"{real_score:.2f} and generated ones {fake_score:.2f} on average; "
        f"spread across samples {fake_spread:.3f} (real digits "
        f"{real_spread:.3f})"
    )

    generator_path = os.path.join(args.out, "generator.keras")
    generator.save(generator_path)
    console.print(
        f"trained in {train_seconds:.0f} s; {len(grid.paths)} digit grids "
        f"and the generator written to {args.out}"
    )
    return {
        "d_loss": d_loss,
        "g_loss": g_loss,
        "history": history.history,
        "real_score": real_score,
        "fake_score": fake_score,
        "fake_spread": fake_spread,
        "real_spread": real_spread,
        "fixed_noise": fixed_noise,
        "images_before": images_before,
        "images_after": images_after,
        "grid_paths": grid.paths,
        "generator_path": generator_path,
        "train_seconds": train_seconds,
    }


if __name__ == "__main__":
    main()
