"""Position-wise feed-forward network of a Transformer block (GELU or SwiGLU)."""

import keras
from keras import ops

from keras_llm.checks import check_positive_int
from keras_llm.checks import check_rate
from keras_llm.layers.attention.multi_head_attention import clone_initializer

GATED_ACTIVATIONS = {"swiglu": "silu", "geglu": "gelu"}


@keras.saving.register_keras_serializable(package="keras_llm")
class FeedForward(keras.layers.Layer):
    """Two-layer feed-forward network, plain or gated (SwiGLU / GeGLU).

    With a plain activation it computes `down(act(up(x)))`; with `"swiglu"`
    (or `"geglu"`) it computes `down(silu(gate(x)) * up(x))`, gate and up
    fused in one matrix multiply.

    Args:
        intermediate_dim: int. Width of the hidden layer.
        activation: `"gelu"`, `"swiglu"`, `"geglu"` or any Keras activation
            name. Defaults to `"gelu"`.
        output_dim: int or `None`. Output width; `None` keeps the input
            width. Defaults to `None`.
        dropout: float. Dropout on the hidden activations. Defaults to `0.0`.
        use_bias: bool. Whether the dense layers have biases. Defaults to
            `True`.
        kernel_initializer: initializer of the kernels. Defaults to
            `"glorot_uniform"`.
        bias_initializer: initializer of the biases. Defaults to `"zeros"`.
        **kwargs: standard `keras.layers.Layer` arguments.

    Example:

    ```python
    import numpy as np
    import keras_llm

    ffn = keras_llm.layers.FeedForward(intermediate_dim=64, activation="swiglu")
    y = ffn(np.zeros((2, 3, 16), "float32"))  # (2, 3, 16)
    ```

    References:
        - [Shazeer, 2020, GLU Variants Improve Transformer](https://arxiv.org/abs/2002.05202)
    """

    def __init__(
        self,
        intermediate_dim,
        activation="gelu",
        output_dim=None,
        dropout=0.0,
        use_bias=True,
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        **kwargs,
    ):
        super().__init__(**kwargs)
        check_positive_int("FeedForward", "intermediate_dim", intermediate_dim)
        check_positive_int("FeedForward", "output_dim", output_dim, True)
        check_rate("FeedForward", "dropout", dropout)
        if not isinstance(activation, str) or (
            activation not in GATED_ACTIVATIONS
        ):
            try:
                keras.activations.get(activation)
            except (ValueError, TypeError) as e:
                raise ValueError(
                    "`FeedForward` got an unknown `activation` "
                    f"{activation!r}: use 'gelu', 'swiglu', 'geglu' or a "
                    "Keras activation."
                ) from e
        self.intermediate_dim = intermediate_dim
        self.activation = activation
        self.output_dim = output_dim
        self.dropout = dropout
        self.use_bias = use_bias
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)

    @property
    def gated(self):
        return isinstance(self.activation, str) and (
            self.activation in GATED_ACTIVATIONS
        )

    def _dense(self, units, name):
        return keras.layers.Dense(
            units,
            use_bias=self.use_bias,
            kernel_initializer=clone_initializer(self.kernel_initializer),
            bias_initializer=clone_initializer(self.bias_initializer),
            dtype=self.dtype_policy,
            name=name,
        )

    def build(self, inputs_shape):
        width = inputs_shape[-1]
        up_units = self.intermediate_dim * (2 if self.gated else 1)
        self.up_dense = self._dense(up_units, "up")
        self.up_dense.build(inputs_shape)
        self.down_dense = self._dense(self.output_dim or width, "down")
        self.down_dense.build(
            tuple(inputs_shape[:-1]) + (self.intermediate_dim,)
        )
        self.dropout_layer = keras.layers.Dropout(
            self.dropout, dtype=self.dtype_policy, name="dropout"
        )
        if self.gated:
            self._act = keras.activations.get(
                GATED_ACTIVATIONS[self.activation]
            )
        else:
            self._act = keras.activations.get(self.activation)
        self.built = True

    def call(self, inputs, training=None):
        h = self.up_dense(inputs)
        if self.gated:
            gate, up = ops.split(h, 2, axis=-1)
            h = self._act(gate) * up
        else:
            h = self._act(h)
        h = self.dropout_layer(h, training=training)
        return self.down_dense(h)

    def compute_output_shape(self, inputs_shape):
        return tuple(inputs_shape[:-1]) + (self.output_dim or inputs_shape[-1],)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "intermediate_dim": self.intermediate_dim,
                "activation": keras.activations.serialize(self.activation)
                if not isinstance(self.activation, str)
                else self.activation,
                "output_dim": self.output_dim,
                "dropout": self.dropout,
                "use_bias": self.use_bias,
                "kernel_initializer": keras.initializers.serialize(
                    self.kernel_initializer
                ),
                "bias_initializer": keras.initializers.serialize(
                    self.bias_initializer
                ),
            }
        )
        return config
