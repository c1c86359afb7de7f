"""Magnitude pruning for Keras 3 models (the tfmot method, rebuilt).

tensorflow-model-optimization (tfmot) prunes tf_keras models only: its
`prune_low_magnitude` rejects Keras 3 layers and models. This module gives
Keras 3 the same method with the same meaning, reusing what works:

- the pruning *schedules* are tfmot's own (`tfmot.sparsity.keras.
  PolynomialDecay`, `ConstantSparsity`, or any object with the same
  `schedule(step) -> (should_prune, sparsity)` call); tfmot is imported
  lazily, inside functions, because importing it switches `tf.keras` to
  tf_keras for the whole process;
- the mask rule is tfmot's (`pruning_impl.Pruning`): at a pruning step the
  `k = max(round(size * (1 - sparsity)), 1)` largest magnitudes are kept
  (ties with the k-th kept too), blocks are ranked by their average (or
  max) magnitude, N:M masks keep the N largest of every M consecutive
  input-channel weights and are computed once, at the first step;
- the timing is tfmot's: a per-wrapper `pruning_step` counts training
  batches (0 at the start of the first `fit`), masks are updated when the
  schedule says so and `weights <- weights * mask` is applied before every
  training batch, and again at the end of each epoch and of training.

What is hand-written, and why: the wrapper and the callback. tfmot's
`PruneLowMagnitude` wraps one layer of a Sequential/Functional tf_keras
model; Keras 3 models are often subclassed with nested sublayers (the
keras_llm `GPT`), so here one `PruneLowMagnitude` wraps a whole model (or a
single layer), finds every prunable kernel inside it, and keeps one
non-trainable mask (and threshold) variable per kernel. The masks are
weights of the wrapper, so a pruned model saves and loads as `.keras` and
resumes pruning where it stopped. `strip_pruning` hands back the wrapped
model itself, of its own class, with zeros in place.

Prunable: `Dense` and `EinsumDense` kernels, `Embedding` tables (with
`ReversibleEmbedding`'s untied reverse table) and `Conv1D`/`Conv2D`/
`Conv3D` kernels. Layers whose own weights are vectors (normalization,
biases) and keras-hub's `PositionEmbedding` are left dense; any other layer
that owns a matrix is unsupported (error, or left dense with
`unsupported="skip"`).

Differences from tfmot, on purpose: block pruning also accepts kernels of
rank 3 or 4 (flattened to `(prod(shape[:-1]), shape[-1])`; tfmot refuses
them), and when a kernel dimension is not a multiple of the block size the
pooled blocks start at index 0 (tfmot's SAME padding pools blocks shifted
by half the padding but expands them unshifted). For divisible shapes, the
usual case, the masks are tfmot's.

For users still on tf_keras (`TF_USE_LEGACY_KERAS=1`): given a tf_keras
model, `prune_low_magnitude` and `strip_pruning` call tfmot's, and the
callbacks, in the `fit` of a tf_keras model, run tfmot's `UpdatePruningStep`
(and read tfmot's masks), whatever the import order.
"""

import os

import keras
import numpy as np

_POOLING_TYPES = ("AVG", "MAX")
_UNSUPPORTED_OPTIONS = ("raise", "skip")


# --------------------------------------------------------------------------
# tf_keras delegation


def _is_tf_keras(obj):
    return type(obj).__module__.split(".")[0] == "tf_keras"


def _tfmot_sparsity():
    """`tfmot.sparsity.keras`, imported without changing the environment."""
    before = os.environ.get("TF_USE_LEGACY_KERAS")
    import tensorflow_model_optimization as tfmot

    if before is None:
        os.environ.pop("TF_USE_LEGACY_KERAS", None)
    else:
        os.environ["TF_USE_LEGACY_KERAS"] = before
    return tfmot.sparsity.keras


# --------------------------------------------------------------------------
# Argument checks


def _check_schedule(schedule):
    """Returns a schedule object; a float means constant sparsity."""
    if isinstance(schedule, (int, float)) and not isinstance(schedule, bool):
        if not 0.0 <= schedule < 1.0:
            raise ValueError(
                "`prune_low_magnitude` expects a target sparsity in [0, 1). "
                f"Received: pruning_schedule={schedule!r}."
            )
        return _tfmot_sparsity().ConstantSparsity(
            float(schedule), begin_step=0, frequency=1
        )
    if not callable(schedule):
        raise TypeError(
            "`prune_low_magnitude` expects `pruning_schedule` to be a tfmot "
            "`PruningSchedule` (e.g. `PolynomialDecay`, `ConstantSparsity`) "
            f"or a float sparsity. Received: {schedule!r}."
        )
    return schedule


def _check_pair(name, value):
    try:
        pair = tuple(value)
    except TypeError:
        pair = None
    if (
        pair is None
        or len(pair) != 2
        or any(isinstance(v, bool) or not isinstance(v, int) for v in pair)
        or any(v <= 0 for v in pair)
    ):
        raise ValueError(
            f"`prune_low_magnitude` expects `{name}` to be a pair of "
            f"positive integers. Received: {name}={value!r}."
        )
    return pair


def _check_options(block_size, block_pooling_type, n_m, unsupported):
    block_size = _check_pair("block_size", block_size)
    if block_pooling_type not in _POOLING_TYPES:
        raise ValueError(
            "`prune_low_magnitude` expects `block_pooling_type` in "
            f"{_POOLING_TYPES}. Received: {block_pooling_type!r}."
        )
    if n_m is not None:
        n_m = _check_pair("n_m", n_m)
        if n_m[0] >= n_m[1]:
            raise ValueError(
                "`prune_low_magnitude` expects `n_m=(N, M)` with N < M (keep "
                f"N of every M weights). Received: n_m={n_m!r}."
            )
        if block_size != (1, 1):
            raise ValueError(
                "`prune_low_magnitude` takes `block_size` or `n_m`, not "
                f"both. Received: block_size={block_size}, n_m={n_m}."
            )
    if unsupported not in _UNSUPPORTED_OPTIONS:
        raise ValueError(
            "`prune_low_magnitude` expects `unsupported` in "
            f"{_UNSUPPORTED_OPTIONS}. Received: {unsupported!r}."
        )
    return block_size, n_m


# --------------------------------------------------------------------------
# Which weights are pruned


def _einsum_input_axis(layer):
    """Kernel axis that holds input features (the last contracted one)."""
    equation = getattr(layer, "equation", "")
    try:
        inputs, _ = equation.split("->")
        input_spec, kernel_spec = inputs.split(",")
    except ValueError:
        return 0
    contracted = [i for i, c in enumerate(kernel_spec) if c in input_spec]
    return contracted[-1] if contracted else 0


def _prunable_weights(layer):
    """`[(variable, input_axis)]` for a supported layer, else `None`."""
    if isinstance(layer, keras.layers.Embedding):
        weights = [(layer._embeddings, 0)]
        reverse = getattr(layer, "reverse_embeddings", None)
        if reverse is not None:
            weights.append((reverse, 0))
        return weights
    if isinstance(layer, keras.layers.Dense):
        return [(layer._kernel, 0)]
    if isinstance(layer, keras.layers.EinsumDense):
        return [(layer._kernel, _einsum_input_axis(layer))]
    if isinstance(
        layer, (keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D)
    ):
        return [(layer._kernel, len(layer._kernel.shape) - 2)]
    return None


def _left_dense(layer):
    """Layers that own matrices but are not pruned by design."""
    return type(layer).__name__ == "PositionEmbedding"


def _collect(root, unsupported="raise", report=False):
    """`[(layer, variable, input_axis)]` of every prunable kernel in `root`."""
    found, seen = [], set()
    for layer in root._flatten_layers(include_self=True, recursive=True):
        if isinstance(layer, PruneLowMagnitude):
            if report or layer is root:
                continue
            raise ValueError(
                f"`prune_low_magnitude`: layer '{layer.name}' is already "
                "pruned; call `strip_pruning` first."
            )
        if getattr(layer, "quantization_mode", None):
            raise ValueError(
                f"`prune_low_magnitude` cannot prune quantized layer "
                f"'{layer.name}' ({layer.quantization_mode}); prune before "
                "quantizing."
            )
        weights = _prunable_weights(layer)
        if weights is None:
            own = list(layer._trainable_variables) + list(
                layer._non_trainable_variables
            )
            if (
                any(len(v.shape) >= 2 for v in own)
                and not _left_dense(layer)
                and unsupported == "raise"
            ):
                matrix = next(v for v in own if len(v.shape) >= 2)
                raise ValueError(
                    "`prune_low_magnitude` does not support layer "
                    f"'{layer.name}' of type {type(layer).__name__} (weight "
                    f"'{matrix.path}'): it "
                    "prunes Dense, EinsumDense, Embedding and Conv1D/2D/3D "
                    "kernels. Pass `unsupported='skip'` to leave it dense."
                )
            continue
        for variable, axis in weights:
            if id(variable) not in seen:
                seen.add(id(variable))
                found.append((layer, variable, axis))
    return found


# --------------------------------------------------------------------------
# Masks (numpy, float32, tfmot's rule)


def _magnitude_mask(abs_weights, sparsity):
    """tfmot `Pruning._update_mask`: keep the k largest magnitudes."""
    flat = abs_weights.reshape(-1)
    keep = np.float32(flat.size) * (np.float32(1.0) - np.float32(sparsity))
    k = int(max(np.round(keep), 1))
    threshold = -np.partition(-flat, k - 1)[k - 1]
    return threshold, (abs_weights >= threshold).astype(np.float32)


def _pool_axis(x, size, axis, pooling):
    """Pools non-overlapping windows of `size` along `axis` (edge: partial)."""
    x = np.moveaxis(x, axis, 0)
    length = x.shape[0]
    starts = np.arange(0, length, size)
    if pooling == "MAX":
        pooled = np.maximum.reduceat(x, starts, axis=0)
    else:
        counts = np.minimum(starts + size, length) - starts
        sums = np.add.reduceat(x, starts, axis=0)
        pooled = sums / counts.reshape((-1,) + (1,) * (x.ndim - 1))
    return np.moveaxis(pooled.astype(np.float32), 0, axis)


def _block_mask(abs_weights, sparsity, block_size, pooling):
    """tfmot's block masks: rank blocks by pooled magnitude."""
    shape = abs_weights.shape
    matrix = (
        abs_weights.reshape(-1, shape[-1]) if len(shape) != 2 else (abs_weights)
    )
    pooled = _pool_axis(matrix, block_size[0], 0, pooling)
    pooled = _pool_axis(pooled, block_size[1], 1, pooling)
    threshold, mask = _magnitude_mask(pooled, sparsity)
    mask = np.repeat(np.repeat(mask, block_size[0], 0), block_size[1], 1)
    mask = mask[: matrix.shape[0], : matrix.shape[1]]
    return threshold, mask.reshape(shape)


def _n_m_mask(abs_weights, n_m, input_axis):
    """Keeps the N largest of every M consecutive input-channel weights."""
    keep, group = n_m
    moved = np.moveaxis(abs_weights, input_axis, -1)
    rows = moved.reshape(-1, moved.shape[-1])
    pad = (-rows.shape[1]) % group
    padded = np.pad(rows, [(0, 0), (0, pad)])
    blocks = padded.reshape(rows.shape[0], -1, group)
    order = np.argsort(-blocks, axis=-1, kind="stable")[..., :keep]
    mask = np.zeros_like(blocks, dtype=np.float32)
    np.put_along_axis(mask, order, 1.0, axis=-1)
    mask = mask.reshape(padded.shape)[:, : rows.shape[1]]
    return np.moveaxis(mask.reshape(moved.shape), -1, input_axis)


# --------------------------------------------------------------------------
# Schedule (de)serialization


def _serialize_schedule(schedule):
    if not hasattr(schedule, "get_config"):
        raise TypeError(
            "`PruneLowMagnitude` can only save a pruning schedule with "
            f"`get_config()`. Received: {schedule!r}."
        )
    config = schedule.get_config()
    if "class_name" not in config:
        config = {"class_name": type(schedule).__name__, "config": config}
    return config


def _deserialize_schedule(config):
    if not isinstance(config, dict):
        return _check_schedule(config)
    sparsity = _tfmot_sparsity()
    cls = getattr(sparsity, config["class_name"], None)
    if cls is None:
        cls = keras.saving.get_registered_object(config["class_name"])
    if cls is None:
        raise ValueError(
            "`PruneLowMagnitude`: unknown pruning schedule "
            f"{config['class_name']!r}; register it with "
            "`keras.saving.register_keras_serializable`."
        )
    return cls(**config["config"])


class _Entries:
    """Holds (layer, weight, mask, threshold, axis) out of Keras tracking,
    so the wrapped layers are saved once, under the wrapped model."""

    def __init__(self):
        self.items = []


# --------------------------------------------------------------------------
# The wrapper


@keras.saving.register_keras_serializable(package="keras_llm")
class PruneLowMagnitude(keras.Model):
    """Wraps a Keras 3 model or layer so its kernels are magnitude-pruned.

    Use `prune_low_magnitude` to make one and `UpdatePruningStep` in `fit`.
    Calling the wrapper calls the wrapped model; the wrapper owns one
    non-trainable `mask` and `threshold` per pruned kernel and a
    `pruning_step` counter, so a pruned model saves and loads as `.keras`.

    Args:
        layer: the `keras.Model` or `keras.layers.Layer` to prune.
        pruning_schedule: a tfmot pruning schedule (`PolynomialDecay`,
            `ConstantSparsity`) or a float: constant sparsity from step 0,
            updated every step.
        block_size: `(height, width)` blocks pruned together; kernels of
            rank other than 2 are seen as `(prod(shape[:-1]), shape[-1])`.
            Defaults to `(1, 1)`.
        block_pooling_type: `"AVG"` or `"MAX"`: how a block's magnitude is
            measured. Defaults to `"AVG"`.
        n_m: `(N, M)` keeps the N largest of every M consecutive weights
            along the input axis (`(2, 4)` is 2:4 sparsity); computed once, at
            the first training step, like tfmot. Defaults to `None`.
        unsupported: `"raise"` or `"skip"` for layers that own a matrix but
            cannot be pruned. Defaults to `"raise"`.
        **kwargs: `keras.Model` arguments (`name`).

    Example:

    ```python
    import numpy as np
    import keras
    from keras_llm.compression import pruning

    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4)])
    pruned = pruning.PruneLowMagnitude(model, pruning_schedule=0.5)
    pruned.compile("sgd", "mse")
    pruned.fit(np.ones((4, 8)), np.ones((4, 4)), verbose=0,
               callbacks=[pruning.UpdatePruningStep()])
    ```
    """

    def __init__(
        self,
        layer,
        *,
        pruning_schedule,
        block_size=(1, 1),
        block_pooling_type="AVG",
        n_m=None,
        unsupported="raise",
        **kwargs,
    ):
        if not isinstance(layer, keras.layers.Layer):
            raise TypeError(
                "`PruneLowMagnitude` expects a Keras 3 `Layer` or `Model`. "
                f"Received: {type(layer).__name__}."
            )
        block_size, n_m = _check_options(
            block_size, block_pooling_type, n_m, unsupported
        )
        kwargs.setdefault("name", f"prune_low_magnitude_{layer.name}")
        super().__init__(**kwargs)
        self.layer = layer
        self.pruning_schedule = _check_schedule(pruning_schedule)
        self.block_size = block_size
        self.block_pooling_type = block_pooling_type
        self.n_m = n_m
        self.unsupported = unsupported
        self._entries = _Entries()
        if layer.built:
            self._create_masks()
            self.built = True

    def build(self, input_shape=None):
        if not self.layer.built:
            self.layer.build(input_shape)
        if not self._entries.items:
            self._create_masks()
        self.built = True

    def _create_masks(self):
        found = _collect(self.layer, self.unsupported)
        if not found:
            raise ValueError(
                f"`prune_low_magnitude`: '{self.layer.name}' has no prunable "
                "weights (Dense, EinsumDense, Embedding, Conv kernels)."
            )
        if self.block_size != (1, 1):
            for _, variable, _ in found:
                if len(variable.shape) < 2:
                    raise ValueError(
                        f"`prune_low_magnitude`: block pruning needs kernels "
                        f"of rank >= 2; '{variable.path}' has shape "
                        f"{tuple(variable.shape)}."
                    )
        for i, (layer, variable, axis) in enumerate(found):
            mask = self.add_weight(
                name=f"mask_{i}",
                shape=variable.shape,
                initializer="ones",
                dtype=variable.dtype,
                trainable=False,
            )
            threshold = self.add_weight(
                name=f"threshold_{i}",
                shape=(),
                initializer="zeros",
                dtype=variable.dtype,
                trainable=False,
            )
            self._entries.items.append((layer, variable, mask, threshold, axis))
        self.pruning_step = self.add_weight(
            name="pruning_step",
            shape=(),
            initializer=keras.initializers.Constant(-1),
            dtype="int64",
            trainable=False,
        )

    def call(self, inputs, training=None, **kwargs):
        return self.layer(inputs, training=training, **kwargs)

    def compute_output_shape(self, input_shape):
        return self.layer.compute_output_shape(input_shape)

    def fit(self, *args, callbacks=None, **kwargs):
        """`keras.Model.fit`; `callbacks` must include `UpdatePruningStep`."""
        if not any(isinstance(c, UpdatePruningStep) for c in callbacks or []):
            raise ValueError(
                f"`{self.name}.fit` needs the Keras 3 pruning callback: pass "
                "`callbacks=[keras_llm.compression.pruning."
                "UpdatePruningStep()]`."
            )
        return super().fit(*args, callbacks=callbacks, **kwargs)

    # --- Pruning ---

    @property
    def pruned_weights(self):
        """`[(kernel, mask)]` for every pruned kernel, in a fixed order."""
        return [(v, m) for _, v, m, _, _ in self._entries.items]

    def apply_masks(self):
        """Sets every pruned kernel to `kernel * mask`."""
        for _, variable, mask, _, _ in self._entries.items:
            variable.assign(keras.ops.multiply(variable, mask))

    def update_masks(self, sparsity):
        """Recomputes every mask from the current kernels at `sparsity`."""
        for _, variable, mask, threshold, axis in self._entries.items:
            weights = np.abs(keras.ops.convert_to_numpy(variable))
            weights = weights.astype(np.float32)
            if self.n_m is not None:
                value = 999.0  # tfmot's placeholder threshold for N:M
                new_mask = _n_m_mask(weights, self.n_m, axis)
            elif self.block_size != (1, 1):
                value, new_mask = _block_mask(
                    weights, sparsity, self.block_size, self.block_pooling_type
                )
            else:
                value, new_mask = _magnitude_mask(weights, sparsity)
            mask.assign(new_mask.astype(mask.dtype))
            threshold.assign(np.asarray(value, dtype=threshold.dtype))

    def prune_step(self):
        """One training step of pruning: count, maybe update masks, mask.

        Called by `UpdatePruningStep` before every training batch.
        """
        step = int(keras.ops.convert_to_numpy(self.pruning_step)) + 1
        self.pruning_step.assign(step)
        should_prune, sparsity = self.pruning_schedule(step)
        sparsity = float(np.asarray(sparsity))
        if not 0.0 <= sparsity < 1.0:
            raise ValueError(
                f"`{self.name}`: the pruning schedule gave sparsity "
                f"{sparsity} at step {step}; expected a value in [0, 1)."
            )
        if self.n_m is not None:
            should_prune = step == 1
        if bool(np.asarray(should_prune)):
            self.update_masks(sparsity)
        self.apply_masks()

    # --- Serialization ---

    def get_config(self):
        return {
            "name": self.name,
            "trainable": self.trainable,
            "layer": keras.saving.serialize_keras_object(self.layer),
            "pruning_schedule": _serialize_schedule(self.pruning_schedule),
            "block_size": list(self.block_size),
            "block_pooling_type": self.block_pooling_type,
            "n_m": None if self.n_m is None else list(self.n_m),
            "unsupported": self.unsupported,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        layer = keras.saving.deserialize_keras_object(config.pop("layer"))
        schedule = _deserialize_schedule(config.pop("pruning_schedule"))
        return cls(layer, pruning_schedule=schedule, **config)


def _wrappers(model):
    return [
        layer
        for layer in model._flatten_layers(include_self=True, recursive=True)
        if isinstance(layer, PruneLowMagnitude)
    ]


# --------------------------------------------------------------------------
# Public functions


def prune_low_magnitude(
    model_or_layer,
    pruning_schedule,
    *,
    block_size=(1, 1),
    block_pooling_type="AVG",
    n_m=None,
    unsupported="raise",
):
    """Makes a Keras 3 model or layer magnitude-pruned while it trains.

    Every `Dense`, `EinsumDense`, `Embedding` and `Conv1D/2D/3D` kernel
    inside (nested sublayers included) gets a mask; train with `fit` and the
    `UpdatePruningStep` callback, then call `strip_pruning`. A tf_keras model
    is handed to `tfmot.sparsity.keras.prune_low_magnitude`.

    Args:
        model_or_layer: a Keras 3 `Model` (Functional, Sequential or
            subclassed) or `Layer`; or a tf_keras model or layer.
        pruning_schedule: a tfmot pruning schedule (`PolynomialDecay`,
            `ConstantSparsity`) or a float sparsity in [0, 1) (constant,
            updated every step).
        block_size: `(height, width)` of blocks pruned together. Defaults to
            `(1, 1)`.
        block_pooling_type: `"AVG"` or `"MAX"`. Defaults to `"AVG"`.
        n_m: `(N, M)`: keep N of every M consecutive input weights, e.g.
            `(2, 4)`. Defaults to `None`.
        unsupported: `"raise"` or `"skip"` for layers that own a matrix this
            cannot prune. Defaults to `"raise"`.

    Returns:
        A `PruneLowMagnitude` model wrapping `model_or_layer` (for tf_keras,
        tfmot's pruned model).

    Raises:
        ValueError: for an unsupported layer (named), a sparsity outside
            [0, 1), bad `block_size`/`n_m`, or nothing to prune.
        TypeError: for an object that is not a Keras layer.

    Example:

    ```python
    import numpy as np
    import keras
    from keras_llm.compression import pruning

    model = keras.Sequential([keras.Input((16,)), keras.layers.Dense(8)])
    pruned = pruning.prune_low_magnitude(model, 0.5)
    pruned.compile("sgd", "mse")
    pruned.fit(np.ones((8, 16)), np.ones((8, 8)), verbose=0,
               callbacks=[pruning.UpdatePruningStep()])
    plain = pruning.strip_pruning(pruned)  # the Sequential, half zeros
    ```
    """
    if _is_tf_keras(model_or_layer):
        block_size, n_m = _check_options(
            block_size, block_pooling_type, n_m, unsupported
        )
        if unsupported != "raise":
            raise ValueError(
                "`prune_low_magnitude`: `unsupported='skip'` is not "
                "available for tf_keras models (tfmot decides)."
            )
        kwargs = {}
        if n_m is not None:
            kwargs["sparsity_m_by_n"] = (n_m[1] - n_m[0], n_m[1])
        return _tfmot_sparsity().prune_low_magnitude(
            model_or_layer,
            pruning_schedule=_check_schedule(pruning_schedule),
            block_size=block_size,
            block_pooling_type=block_pooling_type,
            **kwargs,
        )
    return PruneLowMagnitude(
        model_or_layer,
        pruning_schedule=pruning_schedule,
        block_size=block_size,
        block_pooling_type=block_pooling_type,
        n_m=n_m,
        unsupported=unsupported,
    )


def strip_pruning(model):
    """Removes pruning wrappers, leaving the plain model with zeros in place.

    Args:
        model: a `PruneLowMagnitude` (returns the model it wraps, of its own
            class), a Sequential or Functional model holding pruned layers
            (returns a copy sharing their weights), a model without pruning
            (returned as is), or a tf_keras model (handed to tfmot).

    Returns:
        A Keras model with no mask variables, its kernels already masked.

    Raises:
        ValueError: for a subclassed model that holds pruned layers inside.

    Example:

    ```python
    import keras
    from keras_llm.compression import pruning

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    plain = pruning.strip_pruning(pruning.prune_low_magnitude(model, 0.5))
    assert plain is model
    ```
    """
    if _is_tf_keras(model):
        return _tfmot_sparsity().strip_pruning(model)
    if isinstance(model, PruneLowMagnitude):
        model.apply_masks()
        return model.layer
    wrappers = _wrappers(model)
    if not wrappers:
        return model
    for wrapper in wrappers:
        wrapper.apply_masks()
    if not (
        isinstance(model, keras.Sequential)
        or type(model).__name__ == "Functional"
    ):
        raise ValueError(
            f"`strip_pruning` cannot rebuild {type(model).__name__} "
            f"'{model.name}' around its pruned layers; prune the whole model "
            "with `prune_low_magnitude(model, ...)` instead."
        )

    def unwrap(layer):
        return layer.layer if isinstance(layer, PruneLowMagnitude) else layer

    return keras.models.clone_model(model, clone_function=unwrap)


def sparsity_report(model):
    """Zeros in every prunable kernel of a model, pruned or stripped.

    Args:
        model: a Keras 3 model or layer (a `PruneLowMagnitude` included).

    Returns:
        A list of dicts, one per prunable kernel: `layer` (name), `weight`
        (variable path), `shape`, `zeros` and `sparsity` (zeros / size).

    Example:

    ```python
    import keras
    from keras_llm.compression import pruning

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    rows = pruning.sparsity_report(model)
    assert rows[0]["shape"] == (4, 2)
    ```
    """
    if isinstance(model, PruneLowMagnitude):
        model = model.layer
    rows = []
    for layer, variable, _ in _collect(model, "skip", report=True):
        values = keras.ops.convert_to_numpy(variable)
        zeros = int(values.size - np.count_nonzero(values))
        rows.append(
            {
                "layer": layer.name,
                "weight": variable.path,
                "shape": tuple(values.shape),
                "zeros": zeros,
                "sparsity": zeros / values.size if values.size else 0.0,
            }
        )
    return rows


def print_sparsity_report(model_or_report, console=None):
    """Prints `sparsity_report` as a rich table (with a total row).

    Args:
        model_or_report: a model, or the list `sparsity_report` returned.
        console: a `rich.console.Console`; `None` makes one. Defaults to
            `None`.

    Returns:
        The `rich.table.Table` printed.

    Example:

    ```python
    import keras
    from keras_llm.compression import pruning

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    pruning.print_sparsity_report(model)
    ```
    """
    from rich.console import Console
    from rich.table import Table

    rows = model_or_report
    if isinstance(model_or_report, keras.layers.Layer):
        rows = sparsity_report(model_or_report)
    table = Table(title="Sparsity per weight")
    for column in ("layer", "weight", "shape", "zeros", "sparsity"):
        justify = "left" if column in ("layer", "weight") else "right"
        table.add_column(column, justify=justify)
    total = zeros = 0
    for row in rows:
        size = int(np.prod(row["shape"]))
        total += size
        zeros += row["zeros"]
        table.add_row(
            row["layer"],
            row["weight"],
            "x".join(str(d) for d in row["shape"]),
            f"{row['zeros']:,}",
            f"{row['sparsity']:.1%}",
        )
    table.add_row(
        "total", "", f"{total:,}", f"{zeros:,}", f"{zeros / max(total, 1):.1%}"
    )
    (console or Console()).print(table)
    return table


# --------------------------------------------------------------------------
# Callbacks


@keras.saving.register_keras_serializable(package="keras_llm")
class UpdatePruningStep(keras.callbacks.Callback):
    """Steps the pruning of every `PruneLowMagnitude` in the model in `fit`.

    Before every training batch each wrapper counts the step, updates its
    masks when its schedule says so and masks its kernels; at the end of
    each epoch and of training (and before evaluation or prediction) the
    kernels are masked again, so a saved model is sparse. In the `fit` of a
    tf_keras model it runs tfmot's `UpdatePruningStep` instead. Use
    `steps_per_execution=1` (the default): the callback acts between
    batches.

    Example:

    ```python
    import numpy as np
    import keras
    from keras_llm.compression import pruning

    pruned = pruning.prune_low_magnitude(
        keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)]), 0.5)
    pruned.compile("sgd", "mse")
    pruned.fit(np.ones((2, 4)), np.ones((2, 2)), verbose=0,
               callbacks=[pruning.UpdatePruningStep()])
    ```
    """

    def __init__(self):
        super().__init__()
        self._pruned = []
        self._tfmot = None

    def get_config(self):
        return {}

    # tf_keras' CallbackList asks these of its callbacks.
    def _implements_train_batch_hooks(self):
        return True

    def _implements_test_batch_hooks(self):
        return False

    def _implements_predict_batch_hooks(self):
        return False

    def on_train_begin(self, logs=None):
        self._pruned = []
        if _is_tf_keras(self.model):
            self._tfmot = _tfmot_sparsity().UpdatePruningStep()
            self._tfmot.set_model(self.model)
            self._tfmot.on_train_begin(logs)
            return
        self._tfmot = None
        self._pruned = _wrappers(self.model)
        if not self._pruned:
            raise ValueError(
                "`UpdatePruningStep`: the model has nothing pruned; wrap it "
                "with `prune_low_magnitude` first."
            )
        for wrapper in self._pruned:
            if int(keras.ops.convert_to_numpy(wrapper.pruning_step)) == -1:
                wrapper.pruning_step.assign(0)

    def on_train_batch_begin(self, batch, logs=None):
        for wrapper in self._pruned:
            wrapper.prune_step()

    def _mask(self):
        if _is_tf_keras(self.model):
            return
        for wrapper in self._pruned or _wrappers(self.model):
            wrapper.apply_masks()

    def on_epoch_end(self, epoch, logs=None):
        if self._tfmot is not None:
            self._tfmot.on_epoch_end(epoch, logs)
        self._mask()

    def on_train_end(self, logs=None):
        self._mask()

    def on_test_begin(self, logs=None):
        self._mask()

    def on_predict_begin(self, logs=None):
        self._mask()


class PruningSummaries(keras.callbacks.Callback):
    """Writes each mask's sparsity and threshold to TensorBoard per epoch.

    Like tfmot's `PruningSummaries`: scalars `<mask>/sparsity` and
    `<threshold>/threshold` under `log_dir/metrics`, stepped by the
    optimizer's iterations (TensorFlow backend). It reads tfmot's wrappers
    in the `fit` of a tf_keras model.

    Args:
        log_dir: folder for the TensorBoard event files.

    Example:

    ```python
    import tempfile
    import numpy as np
    import keras
    from keras_llm.compression import pruning

    pruned = pruning.prune_low_magnitude(
        keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)]), 0.5)
    pruned.compile("sgd", "mse")
    pruned.fit(np.ones((2, 4)), np.ones((2, 2)), verbose=0, callbacks=[
        pruning.UpdatePruningStep(),
        pruning.PruningSummaries(tempfile.mkdtemp())])
    ```
    """

    def _implements_train_batch_hooks(self):
        return False

    def _implements_test_batch_hooks(self):
        return False

    def _implements_predict_batch_hooks(self):
        return False

    def __init__(self, log_dir):
        if not isinstance(log_dir, (str, os.PathLike)) or not str(log_dir):
            raise ValueError(
                "`PruningSummaries` expects `log_dir` to be a non-empty "
                f"path. Received: log_dir={log_dir!r}."
            )
        super().__init__()
        self.log_dir = os.fspath(log_dir)
        self._writer = None

    def on_epoch_begin(self, epoch, logs=None):
        import tensorflow as tf

        if self._writer is None:
            self._writer = tf.summary.create_file_writer(
                os.path.join(self.log_dir, "metrics")
            )
        step = int(np.asarray(self.model.optimizer.iterations))
        if _is_tf_keras(self.model):
            from tensorflow_model_optimization.python.core.sparsity.keras import (  # noqa: E501
                pruning_wrapper,
            )

            pairs = [
                (mask, threshold)
                for layer in pruning_wrapper.collect_prunable_layers(self.model)
                for _, mask, threshold in layer.pruning_vars
            ]
        else:
            pairs = [
                (mask, threshold)
                for wrapper in _wrappers(self.model)
                for _, _, mask, threshold, _ in wrapper._entries.items
            ]
        with self._writer.as_default():
            for mask, threshold in pairs:
                name = getattr(mask, "path", mask.name)
                tf.summary.scalar(
                    f"{name}/sparsity",
                    1.0 - float(np.mean(np.asarray(mask))),
                    step=step,
                )
                name = getattr(threshold, "path", threshold.name)
                tf.summary.scalar(
                    f"{name}/threshold",
                    float(np.asarray(threshold)),
                    step=step,
                )
        self._writer.flush()

    def on_train_end(self, logs=None):
        if self._writer is not None:
            self._writer.close()
            self._writer = None
