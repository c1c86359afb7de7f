"""Makes Keras 3's `fit`/`evaluate` work under MultiWorkerMirroredStrategy.

Keras 3.15's TensorFlow trainer fails under
`tf.distribute.MultiWorkerMirroredStrategy` with more than one worker
(keras#20585, also tensorflow#72388), in two places of
`keras/src/backend/tensorflow/trainer.py`:

1. `TensorFlowTrainer._maybe_symbolic_build` takes the first batch of the
   distributed dataset, a `PerReplica`, and calls
   `strategy.reduce("MEAN", batch, axis=None)` on it only to get one batch
   to build the model from. Under MWMS that reduce is a cross-worker
   collective on the integer token ids and fails ("Attempt to convert a
   value (PerReplica ...) to a Tensor").
2. `reduce_per_replica(values, strategy, "auto")`, which reduces the
   metric results of each train/test step, calls
   `strategy.reduce("MEAN", v, axis=0)` under multi-worker; a metric
   result is a scalar, so that fails ("Invalid reduction dimension 0 for
   input with 0 dimensions"). On one worker the same function averages
   element-wise across replicas (`tf.reduce_mean(..., axis=0)` of the
   stacked local results), which is what `axis=None` does across workers.

The fix replaces exactly these two functions with wrappers that handle the
multi-worker case and call the original Keras function for everything else:

1. the wrapper of `_maybe_symbolic_build` takes the first batch itself, keeps
   its first local replica's value (a batch of the per-replica shape: all
   the symbolic build needs) and passes it as `data_batch`;
2. the wrapper of `reduce_per_replica` reduces `"mean"`/`"auto"` under a
   multi-worker MWMS with `strategy.reduce("MEAN", v, axis=None)`.

Gradients are not touched: the optimizer all-reduces them across workers as
it does without the fix. Nothing is patched on import; `apply()` patches
(once), and `keras_llm.distribute.get_strategy("multi_worker")` calls it.
Before patching, `check_keras_internals()` checks that the Keras code still
has the functions, signatures and the exact lines the fix is written
against, and raises `KerasInternalsChanged` naming keras#20585 and the Keras
version if not: after a Keras upgrade, re-check whether the bug is still
there and update or drop this module.
"""

import inspect

import keras

ISSUE = "keras#20585"

# The Keras internals the fix relies on: name -> (signature, source lines
# that must still be there). The lines are the two bugs (so the check fails
# when Keras changes them, fixed or not) and the call sites that make the
# wrappers take effect.
_EXPECTED = {
    "TensorFlowTrainer._maybe_symbolic_build": (
        "(self, iterator=None, data_batch=None)",
        (
            "for _, _, it in iterator:",
            "maybe_distributed_data_batch = next(it)",
            "data_batch = self.distribute_strategy.reduce(",
            "self._symbolic_build(data_batch=data_batch)",
        ),
    ),
    "reduce_per_replica": (
        "(values, strategy, reduction)",
        (
            "if _collective_all_reduce_multi_worker(strategy):",
            'return strategy.reduce("MEAN", v, axis=0)',
        ),
    ),
    "_collective_all_reduce_multi_worker": ("(strategy)", ()),
    "TensorFlowTrainer._make_function": (
        "(self, step_function)",
        ("outputs = reduce_per_replica(",),
    ),
    "TensorFlowTrainer.fit": (
        None,
        ("self._maybe_symbolic_build(iterator=epoch_iterator)",),
    ),
    "TensorFlowTrainer.evaluate": (
        None,
        ("self._maybe_symbolic_build(iterator=epoch_iterator)",),
    ),
}
_APPLIED = "_keras_llm_multi_worker_fix"


class KerasInternalsChanged(RuntimeError):
    """The Keras code the keras#20585 fix patches is not what it expects."""


def _trainer_module():
    from keras.src.backend.tensorflow import trainer

    return trainer


def _lookup(module, dotted):
    obj = module
    for part in dotted.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return getattr(obj, "__wrapped__", obj) if _is_ours(obj) else obj


def _is_ours(function):
    return getattr(function, _APPLIED, False)


def check_keras_internals():
    """Checks the Keras internals the fix relies on; returns the problems.

    Returns:
        A list of strings, empty when the installed Keras has every
        function, signature and source line the fix is written against.

    Example:

    ```python
    from keras_llm import multi_worker_fix

    print(multi_worker_fix.check_keras_internals())  # []
    ```
    """
    try:
        module = _trainer_module()
    except ImportError as e:
        return [f"keras.src.backend.tensorflow.trainer: {e}"]
    problems = []
    for name, (signature, lines) in _EXPECTED.items():
        function = _lookup(module, name)
        if function is None:
            problems.append(f"{name} is gone")
            continue
        found = str(inspect.signature(function))
        if signature is not None and found != signature:
            problems.append(f"{name}{found} (expected {name}{signature})")
        source = inspect.getsource(function)
        for line in lines:
            if line not in source:
                problems.append(f"{name} no longer has `{line}`")
    return problems


def _raise_if_changed():
    problems = check_keras_internals()
    if problems:
        raise KerasInternalsChanged(
            f"keras_llm.multi_worker_fix (for {ISSUE}: Keras fit under "
            "MultiWorkerMirroredStrategy) was written against Keras 3.15.1 "
            f"internals, which changed in Keras {keras.__version__}: "
            f"{'; '.join(problems)}. Check whether {ISSUE} is fixed in this "
            "Keras and update or drop keras_llm/multi_worker_fix.py."
        )


def _mark(wrapper, original):
    wrapper.__wrapped__ = original
    wrapper.__name__ = original.__name__
    wrapper.__qualname__ = original.__qualname__
    wrapper.__doc__ = original.__doc__
    setattr(wrapper, _APPLIED, True)
    return wrapper


def _make_symbolic_build(original, trainer):
    import tensorflow as tf
    from keras.src import tree

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        strategy = self._distribute_strategy
        if (
            iterator is not None
            and strategy is not None
            and trainer._collective_all_reduce_multi_worker(strategy)
        ):
            # One replica's part of the first batch: what the symbolic build
            # needs (shapes and dtypes), with no cross-worker collective.
            for _, _, it in iterator:
                data_batch = tree.map_structure(
                    lambda v: (
                        strategy.experimental_local_results(v)[0]
                        if isinstance(v, tf.distribute.DistributedValues)
                        else v
                    ),
                    next(it),
                )
                break
            iterator = None
        return original(self, iterator=iterator, data_batch=data_batch)

    return _mark(_maybe_symbolic_build, original)


def _make_reduce_per_replica(original, trainer):
    from keras.src import tree

    def reduce_per_replica(values, strategy, reduction):
        if reduction in ("auto", "mean") and (
            trainer._collective_all_reduce_multi_worker(strategy)
        ):
            # Element-wise mean across all replicas of all workers: what the
            # one-worker branch computes, and valid for scalars.
            return tree.map_structure(
                lambda v: strategy.reduce("MEAN", v, axis=None), values
            )
        return original(values, strategy, reduction)

    return _mark(reduce_per_replica, original)


def is_applied():
    """Whether `apply()` has patched Keras in this process."""
    return _is_ours(_trainer_module().reduce_per_replica)


def apply():
    """Patches Keras' TF trainer so `fit`/`evaluate` work under MWMS.

    Idempotent: a second call does nothing. Only the multi-worker case of
    the two patched functions changes; every other call goes to Keras'
    own code.

    Raises:
        KerasInternalsChanged: if the installed Keras does not have the
            internals the fix is written against (see module docstring).

    Example:

    ```python
    from keras_llm import multi_worker_fix

    multi_worker_fix.apply()
    print(multi_worker_fix.is_applied())  # True
    ```
    """
    if is_applied():
        return
    _raise_if_changed()
    trainer = _trainer_module()
    cls = trainer.TensorFlowTrainer
    cls._maybe_symbolic_build = _make_symbolic_build(
        cls._maybe_symbolic_build, trainer
    )
    trainer.reduce_per_replica = _make_reduce_per_replica(
        trainer.reduce_per_replica, trainer
    )
