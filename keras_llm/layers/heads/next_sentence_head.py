"""Next-sentence prediction head (BERT's second pretraining task).

keras-hub ships `MaskedLMHead` but no next-sentence head; TF Model Garden's
`ClassificationHead` is Keras 2 only. This head reads the encoder's sequence
output, pools the `[CLS]` position itself and returns two float32 logits.
The pooler and classifier parts are shared with the classification heads of
this package.
"""

import keras
from keras import ops

from keras_llm.checks import check_positive_int
from keras_llm.checks import check_rate
from keras_llm.layers.attention.multi_head_attention import clone_initializer


def check_sequence_shape(owner, shape):
    """Raises unless `shape` is `(batch, length, hidden)` with known hidden."""
    if len(shape) != 3 or shape[-1] is None:
        raise ValueError(
            f"`{owner}` expects the encoder's sequence output of shape "
            f"(batch, length, hidden) with a known hidden size. Received "
            f"shape {tuple(shape)}."
        )
    return shape[-1]


def check_mask_rank(owner, name, mask):
    """Raises unless `mask` is `None` or of rank 2 `(batch, length)`."""
    if mask is not None and len(mask.shape) != 2:
        raise ValueError(
            f"`{owner}` expects `{name}` of shape (batch, length). "
            f"Received shape {tuple(mask.shape)}."
        )


class ClassifierParts:
    """The pooler dense, dropout and output dense that every pooled
    classification head builds the same way. Mixed into a
    `keras.layers.Layer` with `intermediate_dim`, `activation`, `dropout`
    and `kernel_initializer`."""

    def _build_classifier(self, features_dim, hidden_dim, num_classes):
        units = self.intermediate_dim or hidden_dim
        self.pooler_dense = keras.layers.Dense(
            units,
            activation=self.activation,
            kernel_initializer=clone_initializer(self.kernel_initializer),
            dtype=self.dtype_policy,
            name="pooler_dense",
        )
        self.pooler_dense.build((None, features_dim))
        self.pooler_dropout = keras.layers.Dropout(
            self.dropout, dtype=self.dtype_policy, name="pooler_dropout"
        )
        self.logits_dense = keras.layers.Dense(
            num_classes,
            kernel_initializer=clone_initializer(self.kernel_initializer),
            dtype=self.dtype_policy,
            name="logits_dense",
        )
        self.logits_dense.build((None, units))

    def _classify(self, features, training=None):
        """Pooler dense, dropout, logits; logits cast to float32."""
        x = self.pooler_dense(features)
        x = self.pooler_dropout(x, training=training)
        return ops.cast(self.logits_dense(x), "float32")

    def _classifier_config(self):
        return {
            "intermediate_dim": self.intermediate_dim,
            "activation": keras.activations.serialize(self.activation),
            "dropout": self.dropout,
            "kernel_initializer": keras.initializers.serialize(
                self.kernel_initializer
            ),
        }

    def _init_classifier(
        self, owner, intermediate_dim, activation, dropout, kernel_initializer
    ):
        check_positive_int(
            owner, "intermediate_dim", intermediate_dim, allow_none=True
        )
        check_rate(owner, "dropout", dropout)
        try:
            activation = keras.activations.get(activation)
        except ValueError:
            raise ValueError(
                f"`{owner}` got an unknown `activation`. Received: "
                f"activation={activation!r}."
            ) from None
        self.intermediate_dim = intermediate_dim
        self.activation = activation
        self.dropout = dropout
        self.kernel_initializer = keras.initializers.get(kernel_initializer)

    def _init_classes(self, owner, num_classes, pooling, poolings):
        """Checks and sets `num_classes` and `pooling` (one of `poolings`)."""
        check_positive_int(owner, "num_classes", num_classes)
        if pooling not in poolings:
            raise ValueError(
                f"`{owner}` expects `pooling` to be one of {poolings}. "
                f"Received: pooling={pooling!r}."
            )
        self.num_classes = num_classes
        self.pooling = pooling


@keras.saving.register_keras_serializable(package="keras_llm")
class NextSentenceHead(ClassifierParts, keras.layers.Layer):
    """Next-sentence prediction head: is segment B the sentence after A?

    Takes the encoder's sequence output, keeps the `[CLS]` vector (position
    0), passes it through a pooler `Dense(intermediate_dim, activation)`,
    dropout and a `Dense(2)`, and returns float32 logits whatever the dtype
    policy (computed in the policy's compute dtype, then cast). Class 1 means
    "segment B is the next sentence", class 0 means "segment B is a random
    sentence from another document"; train it with
    `SparseCategoricalCrossentropy(from_logits=True)`.

    Args:
        intermediate_dim: int or `None`. Width of the pooler dense; `None`
            means the encoder's hidden size. Defaults to `None`.
        activation: activation of the pooler dense. Defaults to `"tanh"`.
        dropout: float. Dropout between pooler and classifier. Defaults to
            `0.0`.
        kernel_initializer: initializer of the dense kernels. Defaults to
            `"glorot_uniform"`.
        **kwargs: standard `keras.layers.Layer` arguments.

    Call arguments:
        sequence_output: `(B, T, hidden)` encoder output.
        training: bool.

    Returns:
        `(B, 2)` float32 logits.

    Example:

    ```python
    import numpy as np
    import keras_llm

    head = keras_llm.layers.heads.NextSentenceHead()
    sequence_output = np.random.rand(2, 7, 16).astype("float32")
    logits = head(sequence_output)  # (2, 2), float32
    is_next = np.argmax(logits, axis=-1) == 1
    ```

    References:
        - [Devlin et al., 2019, BERT](https://arxiv.org/abs/1810.04805)
    """

    def __init__(
        self,
        intermediate_dim=None,
        activation="tanh",
        dropout=0.0,
        kernel_initializer="glorot_uniform",
        **kwargs,
    ):
        super().__init__(**kwargs)
        self._init_classifier(
            "NextSentenceHead",
            intermediate_dim,
            activation,
            dropout,
            kernel_initializer,
        )

    def build(self, sequence_output_shape):
        hidden_dim = check_sequence_shape(
            "NextSentenceHead", sequence_output_shape
        )
        self._build_classifier(hidden_dim, hidden_dim, 2)
        self.built = True

    def call(self, sequence_output, training=None):
        return self._classify(sequence_output[:, 0, :], training=training)

    def compute_output_shape(self, sequence_output_shape):
        return (sequence_output_shape[0], 2)

    def get_config(self):
        config = super().get_config()
        config.update(self._classifier_config())
        return config
