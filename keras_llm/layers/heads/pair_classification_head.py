"""Sentence-pair classification head (textual entailment, paraphrase).

For a premise/hypothesis pair packed into one sequence with segment ids
(keras-hub's `MultiSegmentPacker`), either pools `[CLS]` as BERT does or
pools each segment separately and compares them with the
`[u, v, |u - v|, u * v]` features of InferSent / Sentence-BERT.
"""

import keras
from keras import ops

from keras_llm.layers.heads.next_sentence_head import ClassifierParts
from keras_llm.layers.heads.next_sentence_head import check_mask_rank
from keras_llm.layers.heads.next_sentence_head import check_sequence_shape
from keras_llm.layers.heads.sequence_classification_head import masked_mean

POOLINGS = ("cls", "segments")


@keras.saving.register_keras_serializable(package="keras_llm")
class PairClassificationHead(ClassifierParts, keras.layers.Layer):
    """Classifies a packed sentence pair from the encoder's sequence output.

    With `pooling="cls"` the `[CLS]` vector (position 0) is pooled. With
    `pooling="segments"` the valid tokens of segment 0 (the premise, with
    its `[CLS]` and first `[SEP]`) are averaged into `u` and those of
    segment 1 (the hypothesis) into `v`; the features
    `[u, v, |u - v|, u * v]` go on. Either way a pooler
    `Dense(intermediate_dim, activation)`, dropout and a `Dense(num_classes)`
    follow; logits are float32 whatever the dtype policy. What each class
    means (for example entailment / neutral / contradiction) is up to the
    data, not the head.

    Args:
        num_classes: int. Number of classes. Defaults to `3`.
        pooling: `"cls"` or `"segments"`. Defaults to `"cls"`.
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
        segment_ids: `(B, T)` int segment ids (0 premise, 1 hypothesis);
            required by `"segments"` pooling. Defaults to `None`.
        padding_mask: `(B, T)` mask of valid tokens. Pass it with
            `"segments"` pooling: packers give padding segment id 0, so
            without it padding would count as premise. Defaults to `None`.
        training: bool.

    Returns:
        `(B, num_classes)` float32 logits.

    Example:

    ```python
    import numpy as np
    import keras_llm

    head = keras_llm.layers.heads.PairClassificationHead(
        num_classes=3, pooling="segments"
    )
    sequence_output = np.random.rand(2, 6, 16).astype("float32")
    segment_ids = np.array([[0, 0, 0, 1, 1, 0], [0, 0, 1, 1, 1, 1]])
    padding_mask = np.array([[1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1]])
    logits = head(
        sequence_output, segment_ids=segment_ids, padding_mask=padding_mask
    )  # (2, 3)
    ```

    References:
        - [Conneau et al., 2017, InferSent](https://arxiv.org/abs/1705.02364)
        - [Reimers and Gurevych, 2019, Sentence-BERT](https://arxiv.org/abs/1908.10084)
    """

    def __init__(
        self,
        num_classes=3,
        pooling="cls",
        intermediate_dim=None,
        activation="tanh",
        dropout=0.0,
        kernel_initializer="glorot_uniform",
        **kwargs,
    ):
        super().__init__(**kwargs)
        owner = "PairClassificationHead"
        self._init_classes(owner, num_classes, pooling, POOLINGS)
        self._init_classifier(
            owner, intermediate_dim, activation, dropout, kernel_initializer
        )

    def build(
        self,
        sequence_output_shape,
        segment_ids_shape=None,
        padding_mask_shape=None,
    ):
        hidden_dim = check_sequence_shape(
            "PairClassificationHead", sequence_output_shape
        )
        features_dim = hidden_dim * (4 if self.pooling == "segments" else 1)
        self._build_classifier(features_dim, hidden_dim, self.num_classes)
        self.built = True

    def segment_features(self, sequence_output, segment_ids, padding_mask=None):
        """The `[u, v, |u - v|, u * v]` features of `"segments"` pooling.

        Args:
            sequence_output: `(B, T, hidden)` encoder output.
            segment_ids: `(B, T)` int segment ids.
            padding_mask: `(B, T)` mask of valid tokens, or `None`.

        Returns:
            A `(B, 4 * hidden)` tensor in the compute dtype.
        """
        segment_ids = ops.cast(segment_ids, "int32")
        valid = ops.ones_like(segment_ids, dtype="bool")
        if padding_mask is not None:
            valid = ops.cast(padding_mask, "bool")
        first = ops.logical_and(ops.equal(segment_ids, 0), valid)
        second = ops.logical_and(ops.equal(segment_ids, 1), valid)
        u = masked_mean(sequence_output, first, dtype=self.compute_dtype)
        v = masked_mean(sequence_output, second, dtype=self.compute_dtype)
        return ops.concatenate([u, v, ops.abs(u - v), u * v], axis=-1)

    def call(
        self,
        sequence_output,
        segment_ids=None,
        padding_mask=None,
        training=None,
    ):
        owner = "PairClassificationHead"
        check_mask_rank(owner, "segment_ids", segment_ids)
        check_mask_rank(owner, "padding_mask", padding_mask)
        if self.pooling == "cls":
            features = sequence_output[:, 0, :]
        else:
            if segment_ids is None:
                raise ValueError(
                    f"`{owner}` with pooling='segments' needs `segment_ids` "
                    "(0 for the premise, 1 for the hypothesis). Received: "
                    "segment_ids=None."
                )
            features = self.segment_features(
                sequence_output, segment_ids, padding_mask
            )
        return self._classify(features, training=training)

    def compute_output_shape(
        self,
        sequence_output_shape,
        segment_ids_shape=None,
        padding_mask_shape=None,
    ):
        return (sequence_output_shape[0], self.num_classes)

    def get_config(self):
        config = super().get_config()
        config.update(
            {"num_classes": self.num_classes, "pooling": self.pooling}
        )
        config.update(self._classifier_config())
        return config
