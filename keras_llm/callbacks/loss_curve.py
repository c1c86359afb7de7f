"""Writes a loss-curve PNG (training and validation loss against steps)."""

import os

import keras


class LossCurve(keras.callbacks.Callback):
    """Plots training loss per step and validation loss per epoch to a PNG.

    Per-step losses are shown raw (faint) and smoothed by an exponential
    moving average.

    The file is rewritten at the end of every epoch, so an interrupted run
    still leaves its curve. Uses matplotlib's Agg backend (no display).

    Args:
        path: str. The PNG file to write.
        title: str. Plot title. Defaults to `"Loss"`.
    """

    def __init__(self, path, title="Loss"):
        super().__init__()
        self.path = path
        self.title = title
        self.train = []
        self.validation = []
        self._step = 0
        self._previous_mean = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self._previous_mean = 0.0

    def on_train_batch_end(self, batch, logs=None):
        self._step += 1
        if logs and "loss" in logs:
            # Keras logs the running mean over the epoch; recover this
            # batch's own loss from it, so epochs do not show as steps.
            mean = float(logs["loss"])
            loss = (batch + 1) * mean - batch * self._previous_mean
            self._previous_mean = mean
            self.train.append((self._step, loss))

    def on_epoch_end(self, epoch, logs=None):
        if logs and "val_loss" in logs:
            self.validation.append((self._step, float(logs["val_loss"])))
        self.plot()

    def plot(self):
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
        if self.train:
            steps, losses = zip(*self.train)
            ax.plot(steps, losses, color="C0", alpha=0.25, lw=0.8)
            smooth, value = [], losses[0]
            for loss in losses:
                value = 0.95 * value + 0.05 * loss
                smooth.append(value)
            ax.plot(steps, smooth, color="C0", label="train (EMA 0.95)", lw=1.5)
        if self.validation:
            steps, losses = zip(*self.validation)
            ax.plot(steps, losses, "o-", label="validation")
        ax.set_xlabel("step")
        ax.set_ylabel("cross-entropy (nats/token)")
        ax.set_title(self.title)
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        fig.savefig(self.path)
        plt.close(fig)
