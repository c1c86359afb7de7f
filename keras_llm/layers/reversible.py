"""Reversible residual layers (Reformer / RevNet) with a memory-saving backward.

Neither Keras nor keras-hub has reversible residual layers: Keras' answer to
activation memory is `keras.remat`, which still stores one tensor per layer
and recomputes inside it, and trax's `ReversibleSerial` (the Reformer's own
code) runs on trax/JAX only. This module gives Keras 3 a reversible
Transformer stack whose backward pass reconstructs each block's inputs from
its outputs, so that the activation memory of training does not grow with
the number of blocks.

`ReversibleBlock` is one reversible pair `y1 = x1 + F(x2)`,
`y2 = x2 + G(y1)` with `F` = LayerNorm -> self-attention and `G` =
LayerNorm -> feed-forward; `inverse` recovers `(x1, x2)` from `(y1, y2)`.
`ReversibleStack` chains such blocks. On the TensorFlow backend, with
`reversible=True`, the whole stack runs under one `tf.custom_gradient`: the
forward pass keeps only the stack's two output halves, and the backward
pass walks the blocks in reverse, reconstructing each block's inputs with
`inverse` and recomputing `F` and `G` under a local `tf.GradientTape` to get
input and weight gradients. The modelling code (the blocks) uses
`keras.ops` only; the custom gradient is the one TensorFlow-specific part,
and on another backend the stack falls back to ordinary autodiff (same
outputs and gradients, no memory saving).
"""

import keras
from keras import ops

from keras_llm.checks import check_positive_int
from keras_llm.checks import check_rate
from keras_llm.layers.attention.multi_head_attention import clone_initializer
from keras_llm.layers.attention.registry import make_attention
from keras_llm.layers.transformer_block import BlockParts


def _check_attention(owner, attention):
    if isinstance(attention, keras.layers.Layer):
        raise TypeError(
            f"`{owner}` builds one attention layer per block and takes "
            "`attention` as a registered name or a serialized layer config "
            f"dict, not a layer instance. Received: {attention!r}."
        )
    if not isinstance(attention, (str, dict)):
        raise TypeError(
            f"`{owner}` expects `attention` to be a registered name or a "
            f"layer config dict. Received: {attention!r}."
        )


@keras.saving.register_keras_serializable(package="keras_llm")
class ReversibleBlock(BlockParts, keras.layers.Layer):
    """One reversible residual pair of the Reformer: attention, then FFN.

    With `F(x) = attention(norm_f(x))` and `G(x) = ffn(norm_g(x))` the block
    maps a pair `(x1, x2)` to

    ```
    y1 = x1 + F(x2)
    y2 = x2 + G(y1)
    ```

    and `inverse` maps `(y1, y2)` back: `x2 = y2 - G(y1)`,
    `x1 = y1 - F(x2)`. The reconstruction is exact up to floating-point
    rounding (about 1e-6 relative in float32; in float16 and bfloat16 it is
    only as good as those formats, see `ReversibleStack`).

    Args:
        num_heads: int. Number of attention heads.
        intermediate_dim: int. Hidden width of the feed-forward network.
        attention: the self-attention `F` uses: a registered name (see
            `keras_llm.layers.attention.registered_attention_names()`) or a
            serialized layer config dict. Defaults to `"dense"`.
        attention_kwargs: dict of extra constructor arguments for a named
            attention (for example `{"window": 256}`). Defaults to `None`.
        key_dim: int or `None`. Size of each head; `None` means
            `hidden_dim // num_heads`. Defaults to `None`.
        activation: feed-forward activation (`"gelu"`, `"swiglu"`, ...).
            Defaults to `"gelu"`.
        dropout: float. Dropout on the outputs of `F` and `G` and on the
            feed-forward hidden layer. Any dropout makes `inverse` inexact
            unless the same masks are replayed, which this block does not
            do. Defaults to `0.0`.
        causal: bool. Causal self-attention. Defaults to `False`.
        rotary_max_wavelength: int or `None`. Rotary positions in the
            attention when set. Defaults to `None`.
        layer_norm_epsilon: float. Defaults to `1e-5`.
        use_bias: bool. Biases in projections and layer norms. Defaults to
            `True`.
        kernel_initializer: initializer of the kernels. Defaults to
            `"glorot_uniform"`.
        **kwargs: standard `keras.layers.Layer` arguments.

    Call arguments:
        inputs: a pair `(x1, x2)` of `(B, T, hidden_dim)` tensors, or `x1`
            alone when `x2` is given.
        x2: `(B, T, hidden_dim)` tensor, the second half, when `inputs` is
            `x1` alone. Defaults to `None`.
        padding_mask: `(B, T)` mask of valid positions, or `None`.
        training: bool.

    Returns:
        The pair `(y1, y2)`, each `(B, T, hidden_dim)`.

    Example:

    ```python
    import numpy as np
    from keras_llm.layers.reversible import ReversibleBlock

    block = ReversibleBlock(num_heads=2, intermediate_dim=32, causal=True)
    x1 = np.random.rand(2, 5, 16).astype("float32")
    x2 = np.random.rand(2, 5, 16).astype("float32")
    y1, y2 = block((x1, x2))
    r1, r2 = block.inverse(y1, y2)
    np.testing.assert_allclose(r1, x1, atol=1e-5)
    np.testing.assert_allclose(r2, x2, atol=1e-5)
    ```

    References:
        - [Gomez et al., 2017, The Reversible Residual Network](https://arxiv.org/abs/1707.04585)
        - [Kitaev et al., 2020, Reformer](https://arxiv.org/abs/2001.04451)
    """

    def __init__(
        self,
        num_heads,
        intermediate_dim,
        attention="dense",
        attention_kwargs=None,
        key_dim=None,
        activation="gelu",
        dropout=0.0,
        causal=False,
        rotary_max_wavelength=None,
        layer_norm_epsilon=1e-5,
        use_bias=True,
        kernel_initializer="glorot_uniform",
        **kwargs,
    ):
        super().__init__(**kwargs)
        name = type(self).__name__
        check_positive_int(name, "num_heads", num_heads)
        check_positive_int(name, "intermediate_dim", intermediate_dim)
        check_positive_int(name, "key_dim", key_dim, allow_none=True)
        check_rate(name, "dropout", dropout)
        _check_attention(name, attention)
        self.num_heads = num_heads
        self.intermediate_dim = intermediate_dim
        self.attention = attention
        self.attention_kwargs = dict(attention_kwargs or {})
        self.key_dim = key_dim
        self.activation = activation
        self.dropout = dropout
        self.causal = causal
        self.rotary_max_wavelength = rotary_max_wavelength
        self.layer_norm_epsilon = layer_norm_epsilon
        self.use_bias = use_bias
        self.kernel_initializer = keras.initializers.get(kernel_initializer)

    def build(self, inputs_shape, x2_shape=None):
        # Accept the pair of shapes (the call input) or one half's shape.
        if (
            isinstance(inputs_shape, (list, tuple))
            and inputs_shape
            and (isinstance(inputs_shape[0], (list, tuple)))
        ):
            inputs_shape = inputs_shape[0]
        inputs_shape = tuple(inputs_shape)
        if len(inputs_shape) != 3:
            raise ValueError(
                f"`{type(self).__name__}` expects each input half of rank 3 "
                f"(batch, length, hidden_dim). Received shape {inputs_shape}."
            )
        hidden_dim = inputs_shape[-1]
        if self.key_dim is None and hidden_dim % self.num_heads:
            raise ValueError(
                f"`{type(self).__name__}` expects the input width to be "
                f"divisible by `num_heads` when `key_dim` is None. Received "
                f"width {hidden_dim}, num_heads={self.num_heads}."
            )
        self.self_attention = make_attention(
            self.attention,
            self._attention_options(),
            num_heads=self.num_heads,
            key_dim=self.key_dim or hidden_dim // self.num_heads,
            use_bias=self.use_bias,
            kernel_initializer=clone_initializer(self.kernel_initializer),
            dtype=self.dtype_policy,
            name="self_attention",
        )
        self.self_attention.build(inputs_shape)
        self.attention_norm = self._norm("attention_norm")
        self.attention_norm.build(inputs_shape)
        self._build_feed_forward(inputs_shape)
        self.built = True

    def _build_for(self, x):
        """Builds the block on first use through `forward` / `inverse`."""
        if not self.built:
            self.build(tuple(x.shape))

    def f(self, x, padding_mask=None, training=None):
        """The attention branch `F(x) = attention(norm(x))`."""
        h = self.self_attention(
            self.attention_norm(x),
            padding_mask=padding_mask,
            use_causal_mask=self.causal,
            training=training,
        )
        return self.residual_dropout(h, training=training)

    def g(self, x, training=None):
        """The feed-forward branch `G(x) = ffn(norm(x))`."""
        h = self.feed_forward(self.feed_forward_norm(x), training=training)
        return self.residual_dropout(h, training=training)

    def forward(self, x1, x2, padding_mask=None, training=None):
        """`(x1, x2) -> (y1, y2)`: `y1 = x1 + F(x2)`, `y2 = x2 + G(y1)`."""
        self._build_for(x1)
        y1 = x1 + self.f(x2, padding_mask, training)
        y2 = x2 + self.g(y1, training)
        return y1, y2

    def inverse(self, y1, y2, padding_mask=None, training=None):
        """`(y1, y2) -> (x1, x2)`: `x2 = y2 - G(y1)`, `x1 = y1 - F(x2)`."""
        self._build_for(y1)
        x2 = y2 - self.g(y1, training)
        x1 = y1 - self.f(x2, padding_mask, training)
        return x1, x2

    def call(self, inputs, x2=None, padding_mask=None, training=None):
        if x2 is None:
            inputs, x2 = inputs
        return self.forward(inputs, x2, padding_mask, training)

    def compute_output_shape(self, inputs_shape, x2_shape=None, **kwargs):
        if x2_shape is None:
            inputs_shape, x2_shape = inputs_shape
        return tuple(inputs_shape), tuple(x2_shape)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_heads": self.num_heads,
                "intermediate_dim": self.intermediate_dim,
                "attention": self.attention,
                "attention_kwargs": self.attention_kwargs,
                "key_dim": self.key_dim,
                "activation": self.activation,
                "dropout": self.dropout,
                "causal": self.causal,
                "rotary_max_wavelength": self.rotary_max_wavelength,
                "layer_norm_epsilon": self.layer_norm_epsilon,
                "use_bias": self.use_bias,
                "kernel_initializer": keras.initializers.serialize(
                    self.kernel_initializer
                ),
            }
        )
        return config


def _after(x, dy):
    """`x` plus a zero that depends on `dy`, so `x` is used only after `dy`.

    Without this data dependency the graph executor (or XLA) may run every
    block's reconstruction as soon as the forward pass ends, before the
    incoming gradient arrives, and keep all recomputed activations alive at
    once. The zero is `where(b == b, 0, nan)` with `b` a bool cast of one
    element of `dy`, which is always 0 (also when `dy` is inf or NaN) and
    which neither Grappler nor XLA folds away (the trick of
    `tf.recompute_grad`).
    """
    import tensorflow as tf

    elem = tf.reshape(dy, [-1])[:1]
    elem = tf.cast(tf.reduce_max(elem), tf.bool)
    zero = tf.where(tf.equal(elem, elem), 0.0, float("nan"))
    return x + tf.cast(zero, x.dtype)


def _add(total, grad):
    if grad is None:
        return total
    if total is None:
        return grad
    return total + grad


@keras.saving.register_keras_serializable(package="keras_llm")
class ReversibleStack(keras.layers.Layer):
    """A stack of reversible Transformer blocks whose memory does not grow with depth.

    The input `x` of shape `(B, T, hidden_dim)` is duplicated into the pair
    `x1 = x2 = x`, passed through `num_layers` `ReversibleBlock`s and the
    output is the mean of the two halves, `(y1 + y2) / 2`.

    With `reversible=True` on the TensorFlow backend the stack runs under one
    `tf.custom_gradient`: the forward pass keeps only its two output halves
    (earlier activations are freed), and the backward pass walks the blocks
    in reverse, reconstructs each block's inputs from its outputs with
    `ReversibleBlock.inverse` and recomputes `F` and `G` under a local
    `tf.GradientTape` to get the input and weight gradients. Activation
    memory is then that of the outputs plus one block, independent of
    `num_layers`, for about one extra forward pass of compute. It works in
    `model.fit` with and without `jit_compile`, under mixed precision and
    under `tf.distribute` strategies.

    With `reversible=False`, or on a backend other than TensorFlow (where
    the custom gradient is not implemented), the same computation is
    differentiated by ordinary autodiff: identical outputs and, up to
    float32 rounding, identical gradients, but every block's activations are
    kept for the backward pass.

    Dropout: the backward pass recomputes `F` and `G`, so every dropout mask
    would have to be replayed exactly; this layer does not do that and
    rejects `dropout > 0` (or a `"dropout"` in `attention_kwargs`) with
    `reversible=True`. With `reversible=False` dropout is allowed.

    Precision: reconstructing inputs from outputs subtracts `F` and `G`
    again, which is exact only up to rounding. In float32 the gradients
    match ordinary autodiff to a few 1e-6 (absolute, on gradients of order
    10). Under `mixed_float16` / `mixed_bfloat16` the blocks compute in 16
    bits, so each reconstructed activation carries an error of the order of
    the format's precision times the activation's magnitude, and it
    accumulates over the blocks of the backward pass. Measured on unit-scale
    inputs: one block's `inverse(forward(x))` is off by up to 2e-3 in
    float16 and 8e-3 in bfloat16 (2e-7 in float32), and the gradients of a
    3-block stack differ from autodiff's by up to 0.2% (float16) and 1%
    (bfloat16) of the largest gradient. Training is unaffected in practice
    (the Reformer trains this way), but do not expect bit-equal gradients.

    Args:
        num_layers: int. Number of reversible blocks.
        num_heads: int. Number of attention heads.
        intermediate_dim: int. Hidden width of the feed-forward networks.
        attention: self-attention of every block: a registered name or a
            serialized layer config dict. Defaults to `"dense"`.
        attention_kwargs: dict of extra constructor arguments of a named
            attention. Defaults to `None`.
        key_dim: int or `None`. Size of each head; `None` means
            `hidden_dim // num_heads`. Defaults to `None`.
        activation: feed-forward activation. Defaults to `"gelu"`.
        dropout: float. Dropout on the branch outputs and feed-forward
            hidden layer; must be 0 with `reversible=True`. Defaults to
            `0.0`.
        causal: bool. Causal self-attention. Defaults to `False`.
        rotary_max_wavelength: int or `None`. Rotary positions when set.
            Defaults to `None`.
        layer_norm_epsilon: float. Defaults to `1e-5`.
        use_bias: bool. Biases in projections and layer norms. Defaults to
            `True`.
        kernel_initializer: initializer of the kernels. Defaults to
            `"glorot_uniform"`.
        reversible: bool. Use the memory-saving reversible backward pass
            (TensorFlow backend). Defaults to `True`.
        **kwargs: standard `keras.layers.Layer` arguments.

    Call arguments:
        inputs: `(B, T, hidden_dim)` tensor.
        padding_mask: `(B, T)` mask of valid positions, or `None`.
        training: bool.

    Returns:
        `(B, T, hidden_dim)` tensor.

    Example:

    ```python
    import numpy as np
    import keras
    from keras_llm.layers.reversible import ReversibleStack

    stack = ReversibleStack(
        num_layers=4, num_heads=2, intermediate_dim=64, causal=True
    )
    inputs = keras.Input((None, 16))
    model = keras.Model(inputs, keras.layers.Dense(1)(stack(inputs)))
    model.compile(optimizer="adam", loss="mse")
    x = np.random.rand(8, 12, 16).astype("float32")
    model.fit(x, np.zeros((8, 12, 1), "float32"), epochs=1, verbose=0)
    ```

    References:
        - [Gomez et al., 2017, The Reversible Residual Network](https://arxiv.org/abs/1707.04585)
        - [Kitaev et al., 2020, Reformer](https://arxiv.org/abs/2001.04451)
    """

    def __init__(
        self,
        num_layers,
        num_heads,
        intermediate_dim,
        attention="dense",
        attention_kwargs=None,
        key_dim=None,
        activation="gelu",
        dropout=0.0,
        causal=False,
        rotary_max_wavelength=None,
        layer_norm_epsilon=1e-5,
        use_bias=True,
        kernel_initializer="glorot_uniform",
        reversible=True,
        **kwargs,
    ):
        super().__init__(**kwargs)
        name = type(self).__name__
        check_positive_int(name, "num_layers", num_layers)
        self.num_layers = num_layers
        self.num_heads = num_heads
        self.intermediate_dim = intermediate_dim
        self.attention = attention
        self.attention_kwargs = dict(attention_kwargs or {})
        self.key_dim = key_dim
        self.activation = activation
        self.dropout = dropout
        self.causal = causal
        self.rotary_max_wavelength = rotary_max_wavelength
        self.layer_norm_epsilon = layer_norm_epsilon
        self.use_bias = use_bias
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        ReversibleBlock(**self._block_arguments())  # checks them
        attention_dropout = self.attention_kwargs.get("dropout", 0.0)
        if reversible and (dropout > 0 or attention_dropout):
            raise ValueError(
                f"`{name}` with reversible=True recomputes each block in the "
                "backward pass and cannot replay dropout masks, so it needs "
                "dropout=0 (and no 'dropout' in attention_kwargs). Received: "
                f"dropout={dropout!r}, attention_kwargs dropout="
                f"{attention_dropout!r}. Use reversible=False for dropout."
            )
        self.reversible = reversible
        self.supports_masking = True

    def build(self, inputs_shape):
        if len(inputs_shape) != 3:
            raise ValueError(
                f"`{type(self).__name__}` expects inputs of rank 3 (batch, "
                f"length, hidden_dim). Received shape {inputs_shape}."
            )
        self.blocks = []
        for i in range(self.num_layers):
            block = ReversibleBlock(
                **self._block_arguments(),
                dtype=self.dtype_policy,
                name=f"block_{i}",
            )
            block.build(inputs_shape)
            self.blocks.append(block)
        self.built = True

    def _block_arguments(self):
        return dict(
            num_heads=self.num_heads,
            intermediate_dim=self.intermediate_dim,
            attention=self.attention,
            attention_kwargs=self.attention_kwargs,
            key_dim=self.key_dim,
            activation=self.activation,
            dropout=self.dropout,
            causal=self.causal,
            rotary_max_wavelength=self.rotary_max_wavelength,
            layer_norm_epsilon=self.layer_norm_epsilon,
            use_bias=self.use_bias,
            kernel_initializer=clone_initializer(self.kernel_initializer),
        )

    def _forward(self, x, padding_mask, training):
        x1 = x2 = x
        for block in self.blocks:
            x1, x2 = block.forward(x1, x2, padding_mask, training)
        return x1, x2

    def call(self, inputs, padding_mask=None, training=None):
        if self.reversible and keras.backend.backend() == "tensorflow":
            return self._reversible_call(inputs, padding_mask, training)
        y1, y2 = self._forward(inputs, padding_mask, training)
        return (y1 + y2) * ops.cast(0.5, y1.dtype)

    def _reversible_call(self, inputs, padding_mask, training):
        import tensorflow as tf
        from tensorflow.python.eager import record

        blocks = self.blocks

        @tf.custom_gradient
        def reversible_stack(x):
            # Not recorded on any outer tape: the custom gradient below is
            # the only way back, so no intermediate is kept for it.
            with record.stop_recording():
                y1, y2 = self._forward(x, padding_mask, training)
                out = (y1 + y2) * tf.cast(0.5, y1.dtype)

            def grad(dout, variables=None):
                # `variables` are the tf.Variables TF saw being read in the
                # forward pass (the ones keras Variables wrap, or a
                # distributed variable's local copy), in TF's own order. The
                # recomputation reads the same objects, so differentiating
                # with respect to them directly gives the gradients in the
                # order TF expects, with no mapping to keras Variables.
                variables = list(variables or [])
                half = tf.cast(0.5, dout.dtype)
                dy1 = dy2 = dout * half
                v1, v2 = y1, y2
                var_grads = [None] * len(variables)
                for block in reversed(blocks):
                    v1 = _after(v1, dy1)
                    v2 = _after(v2, dy2)
                    # y2 = x2 + G(y1): x2 = y2 - G(y1); dG from dy2.
                    with tf.GradientTape() as tape:
                        tape.watch(v1)
                        tape.watch(variables)
                        g = block.g(v1, training=training)
                    grads = tape.gradient(
                        g, [v1] + variables, output_gradients=dy2
                    )
                    x2 = tf.stop_gradient(v2 - g)
                    dy1 = dy1 + grads[0]
                    var_grads = list(map(_add, var_grads, grads[1:]))
                    # y1 = x1 + F(x2): x1 = y1 - F(x2); dF from dy1.
                    with tf.GradientTape() as tape:
                        tape.watch(x2)
                        tape.watch(variables)
                        f = block.f(x2, padding_mask, training=training)
                    grads = tape.gradient(
                        f, [x2] + variables, output_gradients=dy1
                    )
                    x1 = tf.stop_gradient(v1 - f)
                    dy2 = dy2 + grads[0]
                    var_grads = list(map(_add, var_grads, grads[1:]))
                    v1, v2 = x1, x2
                dx = dy1 + dy2
                var_grads = [
                    tf.zeros_like(v) if g is None else g
                    for v, g in zip(variables, var_grads)
                ]
                return dx, var_grads

            return out, grad

        return reversible_stack(inputs)

    def compute_output_shape(self, inputs_shape, *args, **kwargs):
        return tuple(inputs_shape)

    def compute_mask(self, inputs, mask=None):
        return mask

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_layers": self.num_layers,
                "num_heads": self.num_heads,
                "intermediate_dim": self.intermediate_dim,
                "attention": self.attention,
                "attention_kwargs": self.attention_kwargs,
                "key_dim": self.key_dim,
                "activation": self.activation,
                "dropout": self.dropout,
                "causal": self.causal,
                "rotary_max_wavelength": self.rotary_max_wavelength,
                "layer_norm_epsilon": self.layer_norm_epsilon,
                "use_bias": self.use_bias,
                "kernel_initializer": keras.initializers.serialize(
                    self.kernel_initializer
                ),
                "reversible": self.reversible,
            }
        )
        return config
