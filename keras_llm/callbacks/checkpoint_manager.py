"""Atomic, verified training-state checkpoints in one folder.

Keras saves a model (`model.save`, `save_weights`) but has no store for a
whole training state that survives a crash mid-write: `BackupAndRestore`
overwrites one file in place and resumes only at epoch starts. This
module keeps numbered checkpoints of every variable a run depends on
(model weights, dropout seed-generator states, optimizer state with the
gradient-accumulation sums and the loss scale, metric totals) plus the
Python, NumPy and Keras global RNG states, written to a temporary folder,
fsynced and renamed into place, each with a JSON manifest holding the
SHA-256 of its files so a truncated or partial checkpoint is detected and
skipped. Arrays go through NumPy's `.npz` (any backend, any strategy);
the hand-written part is only the atomic write, the verification and the
rotation.

Layout of `directory`:

```
step-000000012/          one checkpoint: batches consumed when saved
    state.npz            model/NNNNN, optimizer/NNNNN, metrics/NNNNN,
                         rng/... arrays
    checkpoint.json      format, step, state (position, logs, ...),
                         variable counts, files {name: {bytes, sha256}}
nan-step-000000017/      saved by TerminateOnNaN; never resumed from
.tmp-step-000000014-PID  a save in progress (or killed): ignored
```
"""

import hashlib
import json
import logging
import os
import random
import re
import shutil
import time

import keras
import numpy as np

FORMAT = "keras_llm.checkpoint/1"
STATE_FILE = "state.npz"
MANIFEST_FILE = "checkpoint.json"
_NAME = re.compile(r"^step-(\d{9})$")
_TMP_PREFIX = ".tmp-"

logger = logging.getLogger("keras_llm.checkpoint")


class CheckpointError(ValueError):
    """A checkpoint that cannot be restored into the given model."""


def _sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fsync_dir(path):
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # e.g. a platform without directory handles
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _to_numpy(variable):
    # `.numpy()` reads a per-replica (on-read) variable of a strategy as
    # its cross-replica aggregate; `convert_to_numpy(.value)` fails on it.
    return np.asarray(variable.numpy())


def _replica_components(variable):
    """The per-replica `tf.Variable`s of an on-read (per-replica) variable
    when all replicas are in this process, else `None`."""
    value = getattr(variable, "_value", None)
    if type(value).__name__ != "SyncOnReadVariable":
        return None
    components = list(getattr(value, "values", ()))
    strategy = getattr(value, "distribute_strategy", None)
    replicas = getattr(strategy, "num_replicas_in_sync", len(components))
    if len(components) < 2 or len(components) != replicas:
        return None  # multi-worker: other replicas live in other processes
    return components


def _optimizer_variables(model):
    optimizer = getattr(model, "optimizer", None)
    if optimizer is None:
        return []
    if not optimizer.built:
        optimizer.build(model.trainable_variables)
    return list(optimizer.variables)


def _global_seed_generator(create=False):
    """Keras' global SeedGenerator (used by `keras.random` calls without a
    seed), or `None` when none exists and `create` is false."""
    from keras.src.backend.common import global_state

    generator = global_state.get_global_attribute("global_seed_generator")
    if generator is None and create:
        from keras.src.random.seed_generator import global_seed_generator

        generator = global_seed_generator()
    return generator


def is_chief(model=None):
    """Whether this process writes checkpoints: `False` only on the
    non-chief workers of a multi-worker `tf.distribute` strategy."""
    strategy = getattr(model, "distribute_strategy", None)
    if strategy is None and keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        strategy = tf.distribute.get_strategy()
    extended = getattr(strategy, "extended", None)
    return bool(getattr(extended, "should_checkpoint", True))


class CheckpointManager:
    """Saves and restores whole training states, atomically, keeping K.

    A checkpoint holds every variable of the model (weights and dropout
    seed-generator states), of its optimizer (iterations, moments,
    `GradientAccumulation` sums and counter, a `LossScaleOptimizer`'s
    scale) and its metrics, the Python, NumPy and Keras global RNG states,
    and a JSON-able `state` dict of the caller's (the position in the data
    stream, for `StepCheckpoint`). It is written to a hidden temporary
    folder, fsynced, and renamed to `step-NNNNNNNNN`, so a reader sees a
    whole checkpoint or none; `checkpoint.json` records the SHA-256 and
    size of each file, so a checkpoint truncated later (a full disk, a
    copy cut short) is detected: `latest()` logs one warning naming it
    and falls back to the previous one.

    A per-replica (on-read) variable of a strategy, such as the
    `GradientAccumulation` sums, is saved replica by replica when all
    replicas are in this process (MirroredStrategy), and as its
    cross-replica aggregate otherwise. Under a multi-worker strategy every
    worker must call `save` at the same step (reading per-replica
    variables is a collective operation); only the chief writes files.

    Args:
        directory: folder of the checkpoints (created on the first save).
        keep: int >= 1. Newest regular checkpoints kept; older ones are
            deleted after each save. Defaults to `3`.

    Example:

    ```python
    import tempfile
    import numpy as np
    import keras
    from keras_llm.callbacks import CheckpointManager

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    model.compile(optimizer="adam", loss="mse")
    model.fit(np.ones((8, 4)), np.ones((8, 1)), verbose=0)
    manager = CheckpointManager(tempfile.mkdtemp(), keep=2)
    manager.save(model, step=1, state={"epoch": 1})
    print(manager.restore(model)["epoch"])  # 1
    ```
    """

    def __init__(self, directory, keep=3):
        if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
            raise ValueError(
                "`CheckpointManager` expects `keep` to be an int >= 1. "
                f"Received: keep={keep!r}."
            )
        self.directory = os.fspath(directory)
        self.keep = keep

    # --- Reading ---

    def checkpoints(self):
        """`(step, path)` of each renamed (complete-looking) regular
        checkpoint, oldest first; not verified."""
        if not os.path.isdir(self.directory):
            return []
        found = []
        for name in os.listdir(self.directory):
            match = _NAME.match(name)
            path = os.path.join(self.directory, name)
            if match and os.path.isdir(path):
                found.append((int(match.group(1)), path))
        return sorted(found)

    def verify(self, path):
        """The manifest of an intact checkpoint; raises `CheckpointError`
        naming the file that is missing, truncated or altered."""
        manifest_path = os.path.join(path, MANIFEST_FILE)
        try:
            with open(manifest_path, encoding="utf-8") as f:
                manifest = json.load(f)
        except (OSError, ValueError) as e:
            raise CheckpointError(
                f"{manifest_path} is missing or unreadable ({e})"
            ) from None
        if manifest.get("format") != FORMAT:
            raise CheckpointError(f"{manifest_path} is not a {FORMAT} manifest")
        for name, expected in manifest.get("files", {}).items():
            file_path = os.path.join(path, name)
            try:
                size = os.path.getsize(file_path)
            except OSError:
                raise CheckpointError(f"{file_path} is missing") from None
            if size != expected["bytes"]:
                raise CheckpointError(
                    f"{file_path} has {size} bytes, the manifest says "
                    f"{expected['bytes']} (truncated or partial)"
                )
            if _sha256(file_path) != expected["sha256"]:
                raise CheckpointError(
                    f"{file_path} does not match its SHA-256 (corrupt)"
                )
        return manifest

    def latest(self):
        """`(path, manifest)` of the newest intact checkpoint, or `None`.

        Each newer checkpoint that fails `verify` gets one warning line
        naming the bad file and is skipped (left on disk for inspection).
        """
        for _, path in reversed(self.checkpoints()):
            try:
                return path, self.verify(path)
            except CheckpointError as e:
                logger.warning(
                    "skipping corrupt or partial checkpoint: %s; using an "
                    "older one",
                    e,
                )
        return None

    # --- Writing ---

    def save(self, model, step, state=None, prefix="step"):
        """Writes a checkpoint of `model` (and its optimizer) at `step`.

        Args:
            model: a built Keras model.
            step: int. Number in the folder name (batches consumed).
            state: JSON-able dict stored in the manifest. Defaults to
                `None`.
            prefix: `"step"` for a regular checkpoint; another prefix
                (e.g. `"nan-step"`) makes one that `latest()` ignores and
                `keep` does not rotate. Defaults to `"step"`.

        Returns:
            The path of the checkpoint, or `None` on a non-chief worker
            (which reads the variables but writes nothing).
        """
        arrays = self._collect(model)
        counts = {
            group: sum(
                1
                for k in arrays
                if k.startswith(group + "/") and "/replica" not in k
            )
            for group in ("model", "optimizer", "metrics")
        }
        py_state = random.getstate()
        manifest = {
            "format": FORMAT,
            "step": int(step),
            "time": time.time(),
            "keras": keras.__version__,
            "backend": keras.backend.backend(),
            "state": state or {},
            "variables": counts,
            "python_random": [py_state[0], list(py_state[1]), py_state[2]],
            "numpy_random": self._numpy_rng_meta(),
        }
        if not is_chief(model):
            return None
        name = f"{prefix}-{int(step):09d}"
        final = os.path.join(self.directory, name)
        os.makedirs(self.directory, exist_ok=True)
        self._clean_temporaries()
        tmp = os.path.join(self.directory, f"{_TMP_PREFIX}{name}-{os.getpid()}")
        if os.path.exists(tmp):
            shutil.rmtree(tmp)
        os.makedirs(tmp)
        state_path = os.path.join(tmp, STATE_FILE)
        with open(state_path, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        manifest["files"] = {
            STATE_FILE: {
                "bytes": os.path.getsize(state_path),
                "sha256": _sha256(state_path),
            }
        }
        with open(os.path.join(tmp, MANIFEST_FILE), "w", encoding="utf-8") as f:
            json.dump(manifest, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        _fsync_dir(tmp)
        if os.path.exists(final):  # saved again at the same step
            trash = f"{tmp}.old"
            os.rename(final, trash)
            shutil.rmtree(trash)
        os.rename(tmp, final)
        _fsync_dir(self.directory)
        if prefix == "step":
            for _, old in self.checkpoints()[: -self.keep]:
                shutil.rmtree(old, ignore_errors=True)
        return final

    def _clean_temporaries(self):
        """Removes temporary folders of saves that never finished (this
        process's own earlier ones, or those of a killed process)."""
        for name in os.listdir(self.directory):
            if name.startswith(_TMP_PREFIX):
                shutil.rmtree(
                    os.path.join(self.directory, name), ignore_errors=True
                )

    @staticmethod
    def _numpy_rng_meta():
        kind, _, pos, has_gauss, cached = np.random.get_state()
        return [kind, int(pos), int(has_gauss), float(cached)]

    def _collect(self, model):
        arrays = {}
        for group, variables in self._groups(model).items():
            for i, variable in enumerate(variables):
                key = f"{group}/{i:05d}"
                arrays[key] = _to_numpy(variable)
                for r, part in enumerate(_replica_components(variable) or ()):
                    arrays[f"{key}/replica{r}"] = np.asarray(part.numpy())
        arrays["rng/numpy_keys"] = np.random.get_state()[1]
        generator = _global_seed_generator()
        if generator is not None:
            arrays["rng/keras_global"] = _to_numpy(generator.state)
        return arrays

    @staticmethod
    def _groups(model):
        return {
            "model": list(model.variables),
            "optimizer": _optimizer_variables(model),
            "metrics": list(getattr(model, "metrics_variables", [])),
        }

    # --- Restoring ---

    def restore(self, model, path=None, metrics=True):
        """Loads a checkpoint into `model`, its optimizer and the RNGs.

        Args:
            model: the model, built and compiled like the saved one.
            path: a checkpoint folder; `None` for `latest()`. Defaults to
                `None`.
            metrics: bool. Also restore the metric totals. Defaults to
                `True`.

        Returns:
            The `state` dict saved with it, with `"step"` and `"path"`
            added, or `None` when there is no intact checkpoint.

        Raises:
            CheckpointError: if the checkpoint is corrupt or does not fit
                the model (other variable counts or shapes).
        """
        if path is None:
            found = self.latest()
            if found is None:
                return None
            path, manifest = found
        else:
            manifest = self.verify(path)
        with np.load(os.path.join(path, STATE_FILE)) as data:
            arrays = {key: data[key] for key in data.files}
        groups = self._groups(model)
        if not metrics:
            groups.pop("metrics")
        for group, variables in groups.items():
            saved = manifest["variables"].get(group, 0)
            if saved != len(variables):
                raise CheckpointError(
                    f"{path} holds {saved} {group} variables but the model "
                    f"has {len(variables)}: it was saved from another "
                    "model, optimizer or compile()"
                )
            for i, variable in enumerate(variables):
                value = arrays[f"{group}/{i:05d}"]
                if tuple(value.shape) != tuple(variable.shape):
                    raise CheckpointError(
                        f"{path}: {group} variable {variable.path} has "
                        f"shape {tuple(variable.shape)}, the checkpoint "
                        f"{tuple(value.shape)}"
                    )
                variable.assign(value)
                parts = _replica_components(variable) or ()
                keys = [
                    f"{group}/{i:05d}/replica{r}" for r in range(len(parts))
                ]
                if parts and all(k in arrays for k in keys):
                    for part, k in zip(parts, keys):
                        part.assign(arrays[k])
        version, internal, gauss = manifest["python_random"]
        random.setstate((version, tuple(internal), gauss))
        kind, pos, has_gauss, cached = manifest["numpy_random"]
        np.random.set_state(
            (kind, arrays["rng/numpy_keys"], pos, has_gauss, cached)
        )
        if "rng/keras_global" in arrays:
            generator = _global_seed_generator(create=True)
            generator.state.assign(arrays["rng/keras_global"])
        return {**manifest["state"], "step": manifest["step"], "path": path}

    def restore_metrics(self, model, path):
        """Loads only the metric totals of checkpoint `path` into `model`."""
        with np.load(os.path.join(path, STATE_FILE)) as data:
            variables = list(getattr(model, "metrics_variables", []))
            for i, variable in enumerate(variables):
                key = f"metrics/{i:05d}"
                if key in data.files:
                    variable.assign(data[key])
