"""Helpers that compare an attention layer with a dense reference."""

import numpy as np
import tensorflow as tf


def outputs_and_gradients(layer, x, **call_kwargs):
    """Output, d(sum(out * w))/dx and the gradients of the layer's weights."""
    x = tf.constant(x)
    weights = np.random.default_rng(42).normal(size=(1,) + x.shape[1:])
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        out = layer(x, **call_kwargs)
        loss = tf.reduce_sum(out * tf.constant(weights, out.dtype))
    grads = tape.gradient(
        loss, [x] + [w.value for w in layer.trainable_weights]
    )
    return [out.numpy()] + [g.numpy() for g in grads]


def assert_same_function(layer, reference, x, atol=1e-5, ref_kwargs=None,
                         **call_kwargs):  # fmt: skip
    """Copies `reference`'s weights into `layer` and compares outputs and
    gradients (inputs and every weight) to `atol`."""
    reference.build(x.shape) if not reference.built else None
    layer.build(x.shape) if not layer.built else None
    layer.set_weights(reference.get_weights())
    ours = outputs_and_gradients(layer, x, **call_kwargs)
    theirs = outputs_and_gradients(reference, x, **(ref_kwargs or call_kwargs))
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs):
        np.testing.assert_allclose(a, b, atol=atol)
    return float(max(np.abs(a - b).max() for a, b in zip(ours, theirs)))
