"""Gradient accumulation as a wrapper around any Keras optimizer.

Keras' own `gradient_accumulation_steps` argument does not do here: in
Keras 3.15 it raises a `merge_call` RuntimeError inside `fit` under any
`tf.distribute` strategy (keras#20582; its test runs eagerly and misses
it), `LossScaleOptimizer` refuses it, and its learning-rate schedule counts
micro-steps, not updates. This wrapper keeps the accumulation outside the
wrapped optimizer, so the wrapped optimizer (its clipping, weight decay,
schedule and `iterations`) only ever sees real updates with the mean
gradient, and it follows the pattern `LossScaleOptimizer` uses to run a
conditional update under `tf.distribute`.
"""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="keras_llm")
class GradientAccumulation(keras.optimizers.Optimizer):
    """Accumulates gradients over `steps` micro-batches, then updates once.

    Each call to `apply` (one `fit` step on one micro-batch) adds the
    gradients to accumulators; every `steps`-th call the wrapped optimizer
    applies their mean and the accumulators restart from zero. `steps`
    micro-batches of size `b` then give the same update as one batch of
    size `steps * b` with the peak memory of a batch of `b`.

    The wrapped optimizer sees only the real updates: its `iterations`,
    learning-rate schedule, weight decay and gradient clipping count and
    act once per `steps` micro-batches. `iterations` of this wrapper is the
    wrapped optimizer's (updates); `micro_steps` counts micro-batches.

    Under `tf.distribute` each replica accumulates its own gradients
    locally (no communication on micro-steps); the update step all-reduces
    the accumulated sums once, inside the wrapped optimizer. Works in
    `model.fit` with and without a strategy, with `jit_compile` on and off,
    and under `mixed_float16`, where Keras wraps this optimizer in its
    `LossScaleOptimizer` (a micro-batch whose gradients overflow is then
    skipped and not accumulated).

    Args:
        optimizer: a `keras.optimizers.Optimizer` instance (or its
            serialized config) to apply the accumulated gradients.
        steps: int >= 1. Micro-batches per update.
        name: string. Name of the wrapper. Defaults to `None`.

    Example:

    ```python
    import numpy as np
    import keras
    import keras_llm

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    model.compile(
        optimizer=keras_llm.optimizers.GradientAccumulation(
            keras.optimizers.AdamW(1e-3), steps=4
        ),
        loss="mse",
    )
    x, y = np.ones((32, 4)), np.ones((32, 1))
    model.fit(x, y, batch_size=8, verbose=0)  # 4 micro-batches, 1 update
    ```
    """

    def __init__(self, optimizer, steps, name=None, **kwargs):
        if kwargs:
            raise ValueError(
                "`GradientAccumulation` does not take arguments "
                f"{sorted(kwargs)}; set them on the wrapped optimizer."
            )
        if isinstance(optimizer, dict):
            optimizer = keras.optimizers.deserialize(optimizer)
        if not isinstance(optimizer, keras.optimizers.Optimizer):
            raise TypeError(
                "`GradientAccumulation` expects `optimizer` to be a "
                f"keras.optimizers.Optimizer. Received: {optimizer!r}."
            )
        if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
            raise ValueError(
                "`GradientAccumulation` wraps the plain optimizer; Keras "
                "puts its LossScaleOptimizer around this wrapper itself "
                "under mixed_float16."
            )
        if getattr(optimizer, "gradient_accumulation_steps", None):
            raise ValueError(
                "`GradientAccumulation` got an optimizer with Keras' own "
                "`gradient_accumulation_steps`; use one of the two."
            )
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(
                "`GradientAccumulation` expects `steps` to be an int >= 1. "
                f"Received: steps={steps!r}."
            )
        super().__init__(learning_rate=0.0, name=name)
        self.inner_optimizer = optimizer
        self.steps = steps

    # --- State ---

    def build(self, var_list):
        if self.built:
            return
        self.micro_steps = self.add_variable(
            shape=(),
            dtype="int",
            aggregation="only_first_replica",
            name="micro_steps",
        )
        self.accumulators = []
        with keras.name_scope(self.name, caller=self):
            for variable in var_list:
                self.accumulators.append(self._add_accumulator(variable))
        self.inner_optimizer.build(var_list)
        super().build(var_list)

    def _add_accumulator(self, variable):
        """A float32 accumulator per trainable variable.

        It is a per-replica (ON_READ) variable: each replica adds its own
        gradients without communication; reading it across replicas gives
        the mean, so a saved accumulator restores to every replica as a
        value whose all-reduced sum is the saved total.
        """
        kwargs = dict(
            initializer="zeros",
            shape=variable.shape,
            dtype="float32",
            trainable=False,
            aggregation="mean",
            synchronization="on_read",
            name=f"{variable.name}_accumulator",
        )
        if keras.backend.backend() == "tensorflow":
            import tensorflow as tf

            colocate = (
                variable.value
                if isinstance(variable, keras.Variable)
                else variable
            )
            with tf.distribute.get_strategy().extended.colocate_vars_with(
                colocate
            ):
                accumulator = keras.Variable(**kwargs)
        else:
            # Under keras.distribution (JAX) the accumulator is sharded like
            # its weight instead of held whole on every device.
            accumulator = keras.Variable(
                layout=getattr(variable, "_layout", None), **kwargs
            )
        self._track_variable(accumulator)
        return accumulator

    @property
    def variables(self):
        return self._variables + self.inner_optimizer.variables

    @property
    def iterations(self):
        """Updates applied (the wrapped optimizer's steps)."""
        return self.inner_optimizer.iterations

    @property
    def learning_rate(self):
        return self.inner_optimizer.learning_rate

    @learning_rate.setter
    def learning_rate(self, learning_rate):
        # `Optimizer.__init__` sets the wrapper's own rate before the
        # wrapped optimizer exists; that value is unused.
        if "inner_optimizer" in self.__dict__:
            self.inner_optimizer.learning_rate = learning_rate

    def scale_loss(self, loss):
        return self.inner_optimizer.scale_loss(loss)

    def finalize_variable_values(self, var_list):
        self.inner_optimizer.finalize_variable_values(var_list)

    # --- Applying gradients ---

    def apply(self, grads, trainable_variables=None):
        grads = list(grads)
        if trainable_variables is None:
            if not self.built:
                raise ValueError(
                    "`GradientAccumulation.apply` needs "
                    "`trainable_variables` before it is built."
                )
            trainable_variables = self._trainable_variables
        trainable_variables = list(trainable_variables)
        if not self.built:
            with keras.name_scope(self.name, caller=self):
                self.build(trainable_variables)
            self.built = True
        accumulators = [
            self.accumulators[self._get_variable_index(v)]
            for v in trainable_variables
        ]
        if keras.backend.backend() == "tensorflow":
            self._tf_apply(grads, trainable_variables, accumulators)
        else:
            self._select_apply(grads, trainable_variables, accumulators)

    def _is_update_step(self):
        return ops.equal(ops.mod(self.micro_steps, self.steps), 0)

    def _apply_accumulated(self, trainable_variables, accumulators):
        """Applies the mean accumulated gradient and restarts the sums."""
        grads = [
            ops.divide(ops.convert_to_tensor(a), self.steps)
            for a in accumulators
        ]
        grads = [
            ops.cast(g, v.dtype) for g, v in zip(grads, trainable_variables)
        ]
        self.inner_optimizer.apply(grads, trainable_variables)
        for accumulator in accumulators:
            accumulator.assign(ops.zeros(accumulator.shape, accumulator.dtype))

    def _tf_apply(self, grads, trainable_variables, accumulators):
        import tensorflow as tf

        if tf.distribute.in_cross_replica_context():
            raise ValueError(
                "`GradientAccumulation.apply` must be called in a replica "
                "context (inside `strategy.run` or `fit`)."
            )
        # Replica context: add this replica's gradients to its own sums.
        for grad, accumulator in zip(grads, accumulators):
            if grad is not None:
                accumulator.assign_add(
                    tf.cast(tf.convert_to_tensor(grad), accumulator.dtype)
                )

        def cross_replica(distribution):
            # One counter for all replicas; the update (whose all-reduce and
            # variable updates call merge_call) runs back in replica context
            # under a condition taken in cross-replica context, the pattern
            # of Keras' LossScaleOptimizer.
            self.micro_steps.assign_add(1)

            def update():
                distribution.extended.call_for_each_replica(
                    self._apply_accumulated,
                    args=(trainable_variables, accumulators),
                )

            ops.cond(self._is_update_step(), update, lambda: None)

        tf.distribute.get_replica_context().merge_call(cross_replica)

    def _select_apply(self, grads, trainable_variables, accumulators):
        """Backend-agnostic apply without a conditional around side effects.

        JAX traces both branches of a condition, so assignments inside one
        would leak tracers out of its stateless scope. Here the wrapped
        optimizer runs on every micro-step and `where` keeps its results
        only on update steps (more compute, no control flow); used on
        backends other than TensorFlow.
        """
        for grad, accumulator in zip(grads, accumulators):
            if grad is not None:
                accumulator.assign(
                    accumulator.value + ops.cast(grad, accumulator.dtype)
                )
        self.micro_steps.assign(self.micro_steps.value + 1)
        update = self._is_update_step()
        state = list(trainable_variables) + list(self.inner_optimizer.variables)
        # Copies: on TensorFlow `convert_to_tensor` would alias the variable.
        before = [ops.copy(v) for v in state]
        sums = [ops.copy(a) for a in accumulators]
        self._apply_accumulated(trainable_variables, accumulators)
        for variable, old in zip(state, before):
            variable.assign(ops.where(update, variable.value, old))
        for accumulator, total in zip(accumulators, sums):
            accumulator.assign(ops.where(update, accumulator.value, total))

    def get_config(self):
        return {
            "name": self.name,
            "optimizer": keras.optimizers.serialize(self.inner_optimizer),
            "steps": self.steps,
        }

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        config["optimizer"] = keras.optimizers.deserialize(
            config["optimizer"], custom_objects=custom_objects
        )
        return cls(**config)
