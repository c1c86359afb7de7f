"""Span question answering (SQuAD v1.1): features, datasets, decoding, scores.

`squad_features` turns `QAExample`s into fixed-length windows laid out as
`[CLS] question [SEP] context window [SEP] [PAD]...` (packed with keras-hub's
`MultiSegmentPacker`; question segment 0, context segment 1). A context
longer than fits is split into overlapping windows whose starts are
`stride` tokens apart (BERT's doc stride). The answer's character span is
mapped to a token span through the tokenizer's character offsets; a window
that does not hold the whole answer is labelled start = end = 0, the `[CLS]`
position, as in BERT. Each window keeps its token-to-character offsets so
`decode_answers` can turn predicted token spans back into context text.
`squad_metrics` is the official SQuAD v1.1 exact match and F1.
"""

import collections
import re
import string
import warnings

import numpy as np
import tensorflow as tf

from keras_llm.data.tasks.classification import _check_batch_size
from keras_llm.data.tasks.classification import make_packer
from keras_llm.data.tasks.offsets import OffsetWordPiece

MODEL_INPUTS = ("token_ids", "segment_ids", "padding_mask", "context_mask")


def _windows(num_tokens, budget, stride):
    """`(start, length)` of each window over `num_tokens` context tokens."""
    windows, start = [], 0
    while True:
        length = min(num_tokens - start, budget)
        windows.append((start, length))
        if start + length >= num_tokens:
            return windows
        start += min(length, stride)


def _token_span(starts, ends, char_start, char_end):
    """First and last token overlapping `[char_start, char_end)`, or None."""
    overlapping = np.nonzero((ends > char_start) & (starts < char_end))[0]
    if not len(overlapping):
        return None
    return int(overlapping[0]), int(overlapping[-1])


def _ragged(rows):
    """A `tf.RaggedTensor` from a list of int32 arrays."""
    flat = np.concatenate([np.zeros((0,), np.int32), *rows])
    lengths = np.asarray([len(r) for r in rows], np.int64)
    return tf.RaggedTensor.from_row_lengths(flat.astype(np.int32), lengths)


def squad_features(
    examples,
    tokenizer,
    sequence_length=384,
    stride=128,
    max_query_length=64,
):
    """Windows of question and context with answer token positions.

    Args:
        examples: list of `QAExample` (from `read_squad`).
        tokenizer: a keras-hub `WordPieceTokenizer` whose vocabulary has
            `[CLS]`, `[SEP]` and `[PAD]`.
        sequence_length: int. Tokens per window. Defaults to `384`.
        stride: int. Tokens between the starts of consecutive windows over
            one context (BERT's `doc_stride`); windows overlap by the window
            length minus `stride`. Defaults to `128`.
        max_query_length: int. Questions are cut to this many tokens.
            Defaults to `64`.

    Returns:
        A dict of numpy arrays, one row per window (`N` windows, `T =
        sequence_length`):
        - `"token_ids"`, `"segment_ids"`: int32 `(N, T)`.
        - `"padding_mask"`, `"context_mask"`: bool `(N, T)`;
          `context_mask` is true on the window's context tokens only.
        - `"start_positions"`, `"end_positions"`: int32 `(N,)`, the answer's
          first and last token in the window, or 0 (`[CLS]`) when the
          window does not hold the whole answer.
        - `"offsets"`: int32 `(N, T, 2)`, the `[start, end)` characters in
          the context of each context token, -1 elsewhere.
        - `"token_is_max_context"`: bool `(N, T)`, true where this window
          gives the token the most context on both sides (BERT's rule for
          which window may predict a start there).
        - `"example_index"`: int32 `(N,)`; `"example_id"` and `"context"`:
          object `(N,)` arrays of the example's id and context.

    Raises:
        TypeError: if the tokenizer is not a keras-hub `WordPieceTokenizer`.
        ValueError: if the question leaves no room for context.

    Example:

    ```python
    import keras_hub

    from keras_llm.data.tasks import QAExample
    from keras_llm.data.tasks import squad_features

    context = "the cat sat on the mat . the dog sat on the log ."
    start = context.index("the log")
    example = QAExample("q1", "where did the dog sit", context, "the log",
                        start, ("the log",), (start,))
    words = sorted(set(f"{context} {example.question}".split()))
    tokenizer = keras_hub.tokenizers.WordPieceTokenizer(
        vocabulary=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + words
    )
    features = squad_features(
        [example], tokenizer, sequence_length=16, stride=4
    )
    print(features["start_positions"], features["end_positions"])
    # 3 windows; only the last holds all of "the log":
    # [ 0  0 10] [ 0  0 11]
    ```
    """
    for name, value in (
        ("stride", stride),
        ("max_query_length", max_query_length),
    ):
        if not isinstance(value, (int, np.integer)) or value <= 0:
            raise ValueError(
                f"`{name}` must be a positive integer. Received: {value!r}."
            )
    offset_tokenizer = OffsetWordPiece(tokenizer)
    packer, pad_id = make_packer(tokenizer, sequence_length)
    contexts = {}
    questions, windows_tokens, rows, unmapped = [], [], [], []
    for index, example in enumerate(examples):
        query = offset_tokenizer(example.question)[0][:max_query_length]
        budget = sequence_length - len(query) - 3
        if budget < 1:
            raise ValueError(
                f"`sequence_length` {sequence_length} leaves no room for "
                f"context after the {len(query)}-token question of example "
                f"{example.id!r}; raise it or lower `max_query_length`."
            )
        if example.context not in contexts:
            contexts[example.context] = offset_tokenizer(example.context)
        ids, starts, ends = contexts[example.context]
        span = _token_span(
            starts, ends, example.answer_start, example.answer_end
        )
        if span is None:
            unmapped.append(example.id)
        windows = _windows(len(ids), budget, stride)
        # BERT's "max context" score of each token in each window.
        best = {}
        for w, (start, length) in enumerate(windows):
            for t in range(start, start + length):
                score = min(t - start, start + length - 1 - t) + 0.01 * length
                if t not in best or score > best[t][0]:
                    best[t] = (score, w)
        for w, (start, length) in enumerate(windows):
            questions.append(query)
            windows_tokens.append(ids[start : start + length])
            answer = (0, 0)
            if span and start <= span[0] and span[1] < start + length:
                first = len(query) + 2 - start
                answer = (span[0] + first, span[1] + first)
            is_max = [best[t][1] == w for t in range(start, start + length)]
            rows.append(
                (index, example, start, length, len(query), answer, is_max)
            )
    if unmapped:
        warnings.warn(
            f"{len(unmapped)} answers cover no token (their windows are "
            f"labelled [CLS]): ids {unmapped[:5]}",
            stacklevel=2,
        )
    n, t_len = len(rows), int(sequence_length)
    if n:
        # The packer's TensorFlow path, on ragged batches: much faster than
        # its Python path on lists.
        pack = tf.function(lambda a, b: packer((a, b)), autograph=False)
        token_ids, segment_ids = pack(
            _ragged(questions), _ragged(windows_tokens)
        )
        token_ids = np.asarray(token_ids, np.int32).reshape(n, t_len)
        segment_ids = np.asarray(segment_ids, np.int32).reshape(n, t_len)
    else:
        token_ids = np.zeros((0, t_len), np.int32)
        segment_ids = np.zeros((0, t_len), np.int32)
    context_mask = np.zeros((n, t_len), bool)
    max_context = np.zeros((n, t_len), bool)
    offsets = np.full((n, t_len, 2), -1, np.int32)
    start_positions = np.zeros((n,), np.int32)
    end_positions = np.zeros((n,), np.int32)
    example_index = np.zeros((n,), np.int32)
    example_id = np.empty((n,), object)
    context = np.empty((n,), object)
    for r, row in enumerate(rows):
        index, example, start, length, q_len, answer, is_max = row
        first = q_len + 2
        _, starts, ends = contexts[example.context]
        context_mask[r, first : first + length] = True
        max_context[r, first : first + length] = is_max
        offsets[r, first : first + length, 0] = starts[start : start + length]
        offsets[r, first : first + length, 1] = ends[start : start + length]
        start_positions[r], end_positions[r] = answer
        example_index[r] = index
        example_id[r] = example.id
        context[r] = example.context
    return {
        "token_ids": token_ids,
        "segment_ids": segment_ids,
        "padding_mask": token_ids != pad_id,
        "context_mask": context_mask,
        "start_positions": start_positions,
        "end_positions": end_positions,
        "offsets": offsets,
        "token_is_max_context": max_context,
        "example_index": example_index,
        "example_id": example_id,
        "context": context,
    }


def squad_dataset(
    features,
    batch_size,
    shuffle=True,
    seed=None,
    drop_remainder=False,
    repeat=False,
    inputs=MODEL_INPUTS,
):
    """A `tf.data.Dataset` of `(inputs, (start_positions, end_positions))`.

    Args:
        features: the dict from `squad_features`.
        batch_size: int. Windows per batch.
        shuffle: bool. Shuffle windows each epoch. Defaults to `True`.
        seed: int or `None`. Shuffle seed. Defaults to `None`.
        drop_remainder: bool. Drop a last partial batch. Defaults to
            `False`.
        repeat: bool. Repeat forever. Defaults to `False`.
        inputs: the feature keys the model takes. Defaults to
            `("token_ids", "segment_ids", "padding_mask", "context_mask")`.

    Returns:
        A dataset of `(dict of (batch, T) tensors, (start, end))`, the
        targets int32 `(batch,)` token positions.

    Example:

    ```python
    import keras_hub

    from keras_llm.data.tasks import SPECIAL_TOKENS
    from keras_llm.data.tasks import QAExample
    from keras_llm.data.tasks import squad_dataset
    from keras_llm.data.tasks import squad_features

    context = "the cat sat on the mat ."
    example = QAExample("q1", "where", context, "the mat", 15,
                        ("the mat",), (15,))
    vocab = list(SPECIAL_TOKENS) + sorted(set(context.split())) + ["where"]
    tokenizer = keras_hub.tokenizers.WordPieceTokenizer(vocabulary=vocab)
    features = squad_features([example], tokenizer, sequence_length=16)
    ds = squad_dataset(features, batch_size=1, seed=0)
    inputs, (start, end) = next(iter(ds))
    print(start.numpy(), end.numpy())  # [7] [8]
    ```
    """
    _check_batch_size(batch_size)
    missing = [k for k in inputs if k not in features]
    if missing:
        raise ValueError(
            f"`features` has no {missing}; pass the dict `squad_features` "
            "returns."
        )
    count = len(features["start_positions"])
    if not count:
        raise ValueError("`features` holds no windows.")
    ds = tf.data.Dataset.from_tensor_slices(
        (
            {k: features[k] for k in inputs},
            (features["start_positions"], features["end_positions"]),
        )
    )
    if shuffle:
        ds = ds.shuffle(count, seed=seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()
    ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    return ds.prefetch(tf.data.AUTOTUNE)


def _best_spans(start_logits, end_logits, start_ok, end_ok, max_answer_length):
    """Best `(start, end, score)` per window over allowed spans."""
    t_len = start_logits.shape[1]
    offset = np.arange(t_len)[None, :] - np.arange(t_len)[:, None]
    band = (offset >= 0) & (offset < max_answer_length)
    results = []
    for w in range(start_logits.shape[0]):
        allowed = band & start_ok[w][:, None] & end_ok[w][None, :]
        if not allowed.any():
            results.append((0, 0, -np.inf))
            continue
        scores = start_logits[w][:, None] + end_logits[w][None, :]
        scores = np.where(allowed, scores, -np.inf)
        flat = int(np.argmax(scores))
        i, j = divmod(flat, t_len)
        results.append((i, j, float(scores[i, j])))
    return results


def decode_answers(
    features,
    starts,
    ends,
    scores=None,
    max_answer_length=30,
    max_context=True,
):
    """Turns predicted token spans back into answer text, one per example.

    Two kinds of prediction are accepted:
    - logits: `starts`, `ends` float `(N, T)` (a span head's start and end
      logits per window). Each window's best span is the highest
      `start + end` logit over spans inside the context, starting where the
      window gives the token its most context (`token_is_max_context`, as
      BERT's `run_squad.py`; `max_context=False` allows any start), at
      most `max_answer_length` tokens long; `scores` is ignored.
    - positions: `starts`, `ends` int `(N,)` (a head's decoded best span per
      window; 0 means no answer in the window) and optional `scores` `(N,)`.
    An example takes the span of its best-scoring window; positions without
    `scores` take the first window with a valid span. An example with no
    valid span in any window gets `""`.

    Args:
        features: the dict from `squad_features`.
        starts: start logits `(N, T)` or start positions `(N,)`.
        ends: end logits `(N, T)` or end positions `(N,)`.
        scores: `None` or floats `(N,)`, with positions. Defaults to `None`.
        max_answer_length: int, in tokens, with logits. Defaults to `30`.
        max_context: bool. With logits, let a span start only where the
            window gives the token its most context. Defaults to `True`.

    Returns:
        A dict `{example id: answer text}` with the exact context
        characters of the span (original case and spacing).

    Example:

    ```python
    import keras_hub
    import numpy as np

    from keras_llm.data.tasks import SPECIAL_TOKENS
    from keras_llm.data.tasks import QAExample
    from keras_llm.data.tasks import decode_answers
    from keras_llm.data.tasks import squad_features
    from keras_llm.data.tasks import squad_metrics

    context = "The cat sat on the mat."
    example = QAExample("q1", "where", context, "the mat", 15,
                        ("the mat",), (15,))
    vocab = list(SPECIAL_TOKENS) + ["the", "cat", "sat", "on", "mat", "."]
    tokenizer = keras_hub.tokenizers.WordPieceTokenizer(
        vocabulary=vocab + ["where"], lowercase=True
    )
    features = squad_features([example], tokenizer, sequence_length=16)
    # In practice: start_logits, end_logits = model.predict(
    #     squad_dataset(features, 32, shuffle=False))
    start_logits = np.zeros((1, 16))
    end_logits = np.zeros((1, 16))
    start_logits[0, 7] = end_logits[0, 8] = 5.0
    answers = decode_answers(features, start_logits, end_logits)
    print(answers)  # {'q1': 'the mat'}
    print(squad_metrics(answers, [example]))  # exact_match 100.0, f1 100.0
    ```
    """
    starts, ends = np.asarray(starts), np.asarray(ends)
    n = len(features["example_id"])
    if starts.shape[:1] != (n,) or ends.shape != starts.shape:
        raise ValueError(
            f"`starts` and `ends` must have one row per window ({n}). "
            f"Received shapes {starts.shape} and {ends.shape}."
        )
    context_mask = features["context_mask"]
    if starts.ndim == 2:
        spans = _best_spans(
            starts.astype(np.float32),
            ends.astype(np.float32),
            context_mask
            & (features["token_is_max_context"] if max_context else True),
            context_mask,
            max_answer_length,
        )
    elif starts.ndim == 1:
        if scores is None:
            scores = np.zeros((n,), np.float32)
        scores = np.asarray(scores, np.float32).reshape(-1)
        if scores.shape != (n,):
            raise ValueError(
                f"`scores` must have one value per window ({n}). "
                f"Received shape {scores.shape}."
            )
        t_len = context_mask.shape[1]
        spans = []
        for w in range(n):
            i, j = int(starts[w]), int(ends[w])
            valid = (
                0 <= i <= j < t_len
                and context_mask[w, i]
                and context_mask[w, j]
            )
            spans.append((i, j, scores[w]) if valid else (0, 0, -np.inf))
    else:
        raise ValueError(
            "`starts` must be logits (N, T) or positions (N,). Received "
            f"shape {starts.shape}."
        )
    best = {}
    for w, (i, j, score) in enumerate(spans):
        qid = features["example_id"][w]
        best.setdefault(qid, (-np.inf, None, 0, 0))
        if score > best[qid][0]:
            best[qid] = (score, w, i, j)
    answers = {}
    for qid, (_, w, i, j) in best.items():
        if w is None:
            answers[qid] = ""
            continue
        char_start = features["offsets"][w, i, 0]
        char_end = features["offsets"][w, j, 1]
        answers[qid] = features["context"][w][char_start:char_end]
    return answers


def normalize_answer(text):
    """SQuAD v1.1's answer normalisation.

    Lowercases, removes punctuation, the articles a/an/the and extra
    whitespace (the official `evaluate-v1.1.py` steps).

    Example:

    ```python
    from keras_llm.data.tasks import normalize_answer

    normalize_answer("The  Cat's hat!")  # "cats hat"
    ```
    """
    text = text.lower()
    text = "".join(c for c in text if c not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def _f1(prediction, truth):
    pred_tokens = normalize_answer(prediction).split()
    true_tokens = normalize_answer(truth).split()
    common = collections.Counter(pred_tokens) & collections.Counter(true_tokens)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision = same / len(pred_tokens)
    recall = same / len(true_tokens)
    return 2 * precision * recall / (precision + recall)


def squad_metrics(predictions, examples):
    """SQuAD v1.1 exact match and F1, in percent, as the official script.

    Each question scores its best match over all its reference answers; a
    question with no prediction scores 0 (and is counted in `"missing"`).
    As in the official v1.1 script, an answer that normalises to nothing
    (`"the"`) scores exact match 1 but F1 0 against itself.

    Args:
        predictions: dict `{id: answer text}` (from `decode_answers`).
        examples: list of `QAExample`, the references.

    Returns:
        A dict with `"exact_match"` and `"f1"` (0 to 100), `"count"` (the
        questions scored) and `"missing"`.

    Example:

    ```python
    from keras_llm.data.tasks import QAExample
    from keras_llm.data.tasks import squad_metrics

    example = QAExample("q1", "?", "the cat sat", "the cat", 0,
                        ("the cat",), (0,))
    squad_metrics({"q1": "Cat"}, [example])  # exact_match 100.0, f1 100.0
    ```
    """
    if not examples:
        raise ValueError("`examples` is empty; nothing to score.")
    exact = f1 = 0.0
    missing = 0
    for example in examples:
        if example.id not in predictions:
            missing += 1
            continue
        prediction = predictions[example.id]
        exact += max(
            float(normalize_answer(prediction) == normalize_answer(truth))
            for truth in example.answers
        )
        f1 += max(_f1(prediction, truth) for truth in example.answers)
    count = len(examples)
    return {
        "exact_match": 100.0 * exact / count,
        "f1": 100.0 * f1 / count,
        "count": count,
        "missing": missing,
    }
