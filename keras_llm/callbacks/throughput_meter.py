"""Training throughput in tokens per second and model FLOPs utilisation.

Keras reports time per step but not tokens per second or MFU, the two numbers
people compare LM training runs by; this callback adds them to the logs (so
they reach the progress bar, `History` and TensorBoard).
"""

import time

import keras
import numpy as np

# Dense bf16/fp16 tensor-core peaks (FLOP/s) for GPUs people train on.
KNOWN_PEAK_FLOPS = {
    "H200": 989e12,
    "H100": 989e12,
    "A100": 312e12,
    "L4": 121e12,
    "A10": 125e12,
    "V100": 125e12,
    "T4": 65e12,
}


def flops_per_token(model, sequence_length):
    """Training FLOPs per token: `6 * N + 12 * L * T * d`.

    `N` counts parameters without position embeddings (as nanoGPT's
    estimate does), `L` is the number of layers, `T` the sequence length and
    `d` the width. The second term is the attention score and value matmuls
    (forward and backward).

    Args:
        model: a `keras_llm.models.GPT`, or any model with `num_layers` and
            `hidden_dim` attributes.
        sequence_length: int. Tokens per training sequence.
    """
    n = model.count_params()
    position = getattr(model, "position_embedding_layer", None)
    if position is not None:
        n -= int(np.prod(position.position_embeddings.shape))
    return 6 * n + 12 * model.num_layers * sequence_length * model.hidden_dim


def _accelerator_name():
    """Name of the first GPU seen by the active backend, or `""`."""
    backend = keras.backend.backend()
    try:
        if backend == "jax":
            import jax

            device = jax.devices()[0]
            return device.device_kind if device.platform == "gpu" else ""
        if backend == "tensorflow":
            import tensorflow as tf

            gpus = tf.config.list_physical_devices("GPU")
            if gpus:
                details = tf.config.experimental.get_device_details(gpus[0])
                return details.get("device_name", "")
    except Exception:  # noqa: BLE001 - no device query is not an error
        return ""
    return ""


def detect_peak_flops():
    """Peak FLOP/s of the first GPU if it is a known model, else `None`."""
    name = _accelerator_name()
    for key, flops in KNOWN_PEAK_FLOPS.items():
        if key in name:
            return flops
    return None


@keras.saving.register_keras_serializable(package="keras_llm")
class ThroughputMeter(keras.callbacks.Callback):
    """Logs `tokens_per_second`, `tflops` and (with a known peak) `mfu`.

    The first `warmup_steps` steps of training (graph tracing and XLA
    compilation) are left out of the measurement; afterwards each epoch's
    figures cover the steps since the previous measurement.

    Args:
        tokens_per_step: int. Tokens in one global batch
            (`batch_size * sequence_length`).
        flops_per_token: float or `None`. Training FLOPs per token; `None`
            computes `6N + 12 L T d` from the model with `sequence_length`.
            Defaults to `None`.
        sequence_length: int or `None`. Needed when `flops_per_token` is
            `None`. Defaults to `None`.
        peak_flops: float or `None`. Hardware peak FLOP/s for MFU; `None`
            looks the GPU up in `KNOWN_PEAK_FLOPS` (no MFU on CPU).
            Defaults to `None`.
        warmup_steps: int. Steps excluded at the start. Defaults to `2`.

    Example:

    ```python
    import keras
    import numpy as np
    import keras_llm

    model = keras_llm.models.GPT(
        vocabulary_size=16, num_layers=1, num_heads=2, hidden_dim=16,
        max_sequence_length=32,
    )
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(True))
    x = np.random.randint(0, 16, (64, 32))
    meter = keras_llm.callbacks.ThroughputMeter(
        tokens_per_step=8 * 32, sequence_length=32
    )
    model.fit(x, x, batch_size=8, epochs=2, callbacks=[meter], verbose=0)
    print(f"{meter.tokens_per_second:.0f} tokens/s")
    ```
    """

    def __init__(
        self,
        tokens_per_step,
        flops_per_token=None,
        sequence_length=None,
        peak_flops=None,
        warmup_steps=2,
    ):
        super().__init__()
        if flops_per_token is None and sequence_length is None:
            raise ValueError(
                "`ThroughputMeter` needs `flops_per_token` or "
                "`sequence_length`."
            )
        self.tokens_per_step = tokens_per_step
        self.flops_per_token = flops_per_token
        self.sequence_length = sequence_length
        self.peak_flops = peak_flops
        self.warmup_steps = warmup_steps
        self.tokens_per_second = None
        self.history = []

    def on_train_begin(self, logs=None):
        if self.flops_per_token is None:
            self.flops_per_token = flops_per_token(
                self.model, self.sequence_length
            )
        if self.peak_flops is None:
            self.peak_flops = detect_peak_flops()
        self._step = 0
        self._start = None
        self._start_step = 0

    def on_train_batch_end(self, batch, logs=None):
        self._step += 1
        if self._step == self.warmup_steps or (
            self.warmup_steps <= 0 and self._start is None
        ):
            self._start = time.perf_counter()
            self._start_step = self._step

    def measure(self):
        """Figures since the last measurement, or `None` before warm-up."""
        if self._start is None or self._step <= self._start_step:
            return None
        elapsed = time.perf_counter() - self._start
        steps = self._step - self._start_step
        tps = steps * self.tokens_per_step / elapsed
        result = {
            "tokens_per_second": tps,
            "tflops": tps * self.flops_per_token / 1e12,
        }
        if self.peak_flops:
            result["mfu"] = tps * self.flops_per_token / self.peak_flops
        self._start = time.perf_counter()
        self._start_step = self._step
        return result

    def on_epoch_end(self, epoch, logs=None):
        result = self.measure()
        if result is None:
            return
        self.tokens_per_second = result["tokens_per_second"]
        self.history.append(result)
        if logs is not None:
            logs.update(result)

    def get_config(self):
        return {
            "tokens_per_step": self.tokens_per_step,
            "flops_per_token": self.flops_per_token,
            "sequence_length": self.sequence_length,
            "peak_flops": self.peak_flops,
            "warmup_steps": self.warmup_steps,
        }
