"""Extractive question answering head: start and end logits per token.

keras-hub has no span head; TF Model Garden's `SpanLabeling` is Keras 2
only. This head scores every token as the start and the end of the answer,
masks out everything that is not context, and decodes the best span with a
maximum answer length (`best_spans`, vectorized numpy so it also works on
the arrays `predict()` returns).
"""

import keras
import numpy as np
from keras import ops

from keras_llm.checks import check_positive_int
from keras_llm.layers.attention.multi_head_attention import clone_initializer
from keras_llm.layers.heads.next_sentence_head import check_mask_rank
from keras_llm.layers.heads.next_sentence_head import check_sequence_shape

# Added to the float32 logits of non-context positions (after the cast, so
# it is never overflowed by float16).
MASKED_LOGIT = -1e9


def _as_numpy(x):
    if isinstance(x, np.ndarray):
        return x
    return np.asarray(keras.ops.convert_to_numpy(x))


def best_spans(
    start_logits, end_logits, context_mask=None, max_answer_length=30
):
    """The highest-scoring answer span of each example.

    A span `(start, end)` is allowed when `start <= end < start +
    max_answer_length` and both ends are context positions; its score is
    `start_logits[start] + end_logits[end]`. The search is vectorized: the
    end logits are viewed as a `(B, T, max_answer_length)` band of windows,
    so cost and memory are `O(B * T * max_answer_length)`, with no Python
    loop over positions. Ties go to the earliest start, then the earliest
    end. A row with no allowed span (an all-zero context mask) gets
    `start = end = 0` (the `[CLS]` position, the SQuAD 2.0 "no answer"
    convention) and a score of `-inf`.

    Args:
        start_logits: `(B, T)` array or tensor of start logits.
        end_logits: `(B, T)` array or tensor of end logits.
        context_mask: `(B, T)` bool or 0/1 mask of positions that may be in
            the answer, or `None` for all. Defaults to `None`.
        max_answer_length: int. Longest answer, in tokens. Defaults to `30`.

    Returns:
        `(start, end, score)`: numpy arrays of shape `(B,)`; `start` and
        `end` are int64 token positions (both inclusive), `score` float64.

    Example:

    ```python
    import numpy as np
    from keras_llm.layers.heads import best_spans

    start_logits = np.array([[0.0, 5.0, 1.0, 0.0]])
    end_logits = np.array([[0.0, 0.0, 1.0, 9.0]])
    start, end, score = best_spans(
        start_logits, end_logits, max_answer_length=2
    )  # start [2], end [3], score [10.0]
    ```
    """
    start_logits = _as_numpy(start_logits).astype("float64")
    end_logits = _as_numpy(end_logits).astype("float64")
    if start_logits.ndim != 2 or start_logits.shape != end_logits.shape:
        raise ValueError(
            "`best_spans` expects `start_logits` and `end_logits` of the "
            "same shape (batch, length). Received shapes "
            f"{start_logits.shape} and {end_logits.shape}."
        )
    check_positive_int("best_spans", "max_answer_length", max_answer_length)
    if context_mask is not None:
        context_mask = _as_numpy(context_mask).astype(bool)
        if context_mask.shape != start_logits.shape:
            raise ValueError(
                "`best_spans` expects `context_mask` of shape "
                f"{start_logits.shape}. Received shape {context_mask.shape}."
            )
        start_logits = np.where(context_mask, start_logits, -np.inf)
        end_logits = np.where(context_mask, end_logits, -np.inf)
    batch, length = start_logits.shape
    window = max_answer_length
    # ends[b, i, k] = end_logits[b, i + k], -inf past the last position.
    padded = np.pad(
        end_logits, ((0, 0), (0, window - 1)), constant_values=-np.inf
    )
    ends = np.lib.stride_tricks.sliding_window_view(padded, window, axis=1)
    scores = start_logits[:, :, None] + ends  # (B, T, window)
    flat = scores.reshape(batch, length * window)
    best = np.argmax(flat, axis=-1)
    score = flat[np.arange(batch), best]
    start = best // window
    end = start + best % window
    none = ~np.isfinite(score)
    start = np.where(none, 0, start).astype("int64")
    end = np.where(none, 0, end).astype("int64")
    score = np.where(none, -np.inf, score)
    return start, end, score


@keras.saving.register_keras_serializable(package="keras_llm")
class SpanQAHead(keras.layers.Layer):
    """Start and end logits of an extractive answer span, per token.

    A `Dense(2)` on every token of the encoder's sequence output gives a
    start and an end logit, cast to float32 whatever the dtype policy.
    Positions where `context_mask` is 0 (the question, separators,
    padding) get a logit of `-1e9`, added after the cast so float16 cannot
    overflow, so a softmax cross-entropy over positions never puts mass
    there. `decode()` picks the best span no longer than
    `max_answer_length` tokens.

    Args:
        max_answer_length: int. Longest answer `decode()` returns, in
            tokens. Defaults to `30`.
        kernel_initializer: initializer of the dense kernel. Defaults to
            `"glorot_uniform"`.
        **kwargs: standard `keras.layers.Layer` arguments.

    Call arguments:
        sequence_output: `(B, T, hidden)` encoder output.
        context_mask: `(B, T)` mask, 1 where a token may be in the answer.
            Defaults to `None` (every position).
        training: bool.

    Returns:
        A dict `{"start_logits": (B, T), "end_logits": (B, T)}` of float32
        tensors; train each with
        `SparseCategoricalCrossentropy(from_logits=True)` against the start
        and end token positions.

    Example:

    ```python
    import numpy as np
    import keras_llm

    head = keras_llm.layers.heads.SpanQAHead(max_answer_length=3)
    sequence_output = np.random.rand(2, 8, 16).astype("float32")
    context_mask = np.array([[0, 0, 0, 1, 1, 1, 1, 0]] * 2)
    outputs = head(sequence_output, context_mask=context_mask)
    start, end, score = head.decode(
        outputs["start_logits"], outputs["end_logits"], context_mask
    )  # 3 <= start <= end <= 6, end - start < 3
    ```

    References:
        - [Devlin et al., 2019, BERT](https://arxiv.org/abs/1810.04805)
        - [Rajpurkar et al., 2016, SQuAD](https://arxiv.org/abs/1606.05250)
    """

    def __init__(
        self,
        max_answer_length=30,
        kernel_initializer="glorot_uniform",
        **kwargs,
    ):
        super().__init__(**kwargs)
        check_positive_int("SpanQAHead", "max_answer_length", max_answer_length)
        self.max_answer_length = max_answer_length
        self.kernel_initializer = keras.initializers.get(kernel_initializer)

    def build(self, sequence_output_shape, context_mask_shape=None):
        hidden_dim = check_sequence_shape("SpanQAHead", sequence_output_shape)
        self.span_dense = keras.layers.Dense(
            2,
            kernel_initializer=clone_initializer(self.kernel_initializer),
            dtype=self.dtype_policy,
            name="span_dense",
        )
        self.span_dense.build((None, None, hidden_dim))
        self.built = True

    def call(self, sequence_output, context_mask=None, training=None):
        check_mask_rank("SpanQAHead", "context_mask", context_mask)
        logits = ops.cast(self.span_dense(sequence_output), "float32")
        start_logits = logits[..., 0]
        end_logits = logits[..., 1]
        if context_mask is not None:
            keep = ops.cast(context_mask, "bool")
            start_logits = ops.where(keep, start_logits, MASKED_LOGIT)
            end_logits = ops.where(keep, end_logits, MASKED_LOGIT)
        return {"start_logits": start_logits, "end_logits": end_logits}

    def decode(
        self,
        start_logits,
        end_logits,
        context_mask=None,
        max_answer_length=None,
    ):
        """The best span of each example; see `best_spans`.

        Args:
            start_logits: `(B, T)` start logits (tensor or numpy).
            end_logits: `(B, T)` end logits.
            context_mask: `(B, T)` mask of allowed positions, or `None`.
                Defaults to `None`.
            max_answer_length: int or `None` for the head's own. Defaults
                to `None`.

        Returns:
            `(start, end, score)` numpy arrays of shape `(B,)`.
        """
        return best_spans(
            start_logits,
            end_logits,
            context_mask=context_mask,
            max_answer_length=(
                self.max_answer_length
                if max_answer_length is None
                else max_answer_length
            ),
        )

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "max_answer_length": self.max_answer_length,
                "kernel_initializer": keras.initializers.serialize(
                    self.kernel_initializer
                ),
            }
        )
        return config
