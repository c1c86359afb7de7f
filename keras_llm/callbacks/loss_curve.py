"""Writes a loss-curve PNG (training and validation loss against steps)."""

import os

import keras


class LossCurve(keras.callbacks.Callback):
    """Plots training loss per step and validation loss per epoch to a PNG.

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

    def on_train_batch_end(self, batch, logs=None):
        self._step += 1
        if logs and "loss" in logs:
            self.train.append((self._step, float(logs["loss"])))

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
            ax.plot(steps, losses, label="train (running mean per epoch)", lw=1)
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
