"""Sequence classification head (sentiment, topic, speaker: any labels).

keras-hub's classifiers bundle backbone, preprocessor and head into one
task model per architecture; this is the head alone, for any encoder's
sequence output, with `[CLS]` or masked-mean pooling.
"""

import keras
from keras import ops

from keras_llm.layers.heads.next_sentence_head import ClassifierParts
from keras_llm.layers.heads.next_sentence_head import check_mask_rank
from keras_llm.layers.heads.next_sentence_head import check_sequence_shape

POOLINGS = ("cls", "mean")


def masked_mean(sequence_output, mask=None, dtype=None):
    """Mean over the length axis of the positions where `mask` is true.

    Sums in float32 (a long float16 sum can overflow) and returns `dtype`
    (the input's dtype when `None`). Rows without any true position give
    zeros.

    Args:
        sequence_output: `(B, T, hidden)` tensor.
        mask: `(B, T)` bool or 0/1 mask, or `None` for a plain mean.
        dtype: dtype of the result. Defaults to `None`.

    Returns:
        A `(B, hidden)` tensor.
    """
    dtype = dtype or keras.backend.standardize_dtype(sequence_output.dtype)
    x = ops.cast(sequence_output, "float32")
    if mask is None:
        return ops.cast(ops.mean(x, axis=1), dtype)
    weights = ops.cast(ops.cast(mask, "bool"), "float32")[:, :, None]
    total = ops.sum(x * weights, axis=1)
    count = ops.maximum(ops.sum(weights, axis=1), 1.0)
    return ops.cast(total / count, dtype)


@keras.saving.register_keras_serializable(package="keras_llm")
class SequenceClassificationHead(ClassifierParts, keras.layers.Layer):
    """Classifies a whole sequence from the encoder's sequence output.

    Pools one vector per example, either the `[CLS]` vector (position 0,
    `pooling="cls"`, as BERT does) or the mean of the valid tokens
    (`pooling="mean"`, positions where `padding_mask` is 0 are left out),
    then applies a pooler `Dense(intermediate_dim, activation)`, dropout and
    a `Dense(num_classes)`. Logits are float32 whatever the dtype policy.

    Args:
        num_classes: int. Number of classes.
        pooling: `"cls"` or `"mean"`. Defaults to `"cls"`.
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
        padding_mask: `(B, T)` mask of valid tokens, used by `"mean"`
            pooling (`None`: every position counts). Defaults to `None`.
        training: bool.

    Returns:
        `(B, num_classes)` float32 logits.

    Example:

    ```python
    import numpy as np
    import keras_llm

    head = keras_llm.layers.heads.SequenceClassificationHead(
        num_classes=3, pooling="mean"
    )
    sequence_output = np.random.rand(2, 5, 16).astype("float32")
    padding_mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    logits = head(sequence_output, padding_mask=padding_mask)  # (2, 3)
    ```
    """

    def __init__(
        self,
        num_classes,
        pooling="cls",
        intermediate_dim=None,
        activation="tanh",
        dropout=0.0,
        kernel_initializer="glorot_uniform",
        **kwargs,
    ):
        super().__init__(**kwargs)
        owner = "SequenceClassificationHead"
        self._init_classes(owner, num_classes, pooling, POOLINGS)
        self._init_classifier(
            owner, intermediate_dim, activation, dropout, kernel_initializer
        )

    def build(self, sequence_output_shape, padding_mask_shape=None):
        hidden_dim = check_sequence_shape(
            "SequenceClassificationHead", sequence_output_shape
        )
        self._build_classifier(hidden_dim, hidden_dim, self.num_classes)
        self.built = True

    def call(self, sequence_output, padding_mask=None, training=None):
        check_mask_rank(
            "SequenceClassificationHead", "padding_mask", padding_mask
        )
        if self.pooling == "cls":
            pooled = sequence_output[:, 0, :]
        else:
            pooled = masked_mean(
                sequence_output, padding_mask, dtype=self.compute_dtype
            )
        return self._classify(pooled, training=training)

    def compute_output_shape(
        self, sequence_output_shape, padding_mask_shape=None
    ):
        return (sequence_output_shape[0], self.num_classes)

    def get_config(self):
        config = super().get_config()
        config.update(
            {"num_classes": self.num_classes, "pooling": self.pooling}
        )
        config.update(self._classifier_config())
        return config
