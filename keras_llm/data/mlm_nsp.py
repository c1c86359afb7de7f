"""`tf.data` pipeline of BERT pretraining examples: masked LM plus
next-sentence prediction, built on the fly from documents.

Documents are split into sentences and tokenized once. Each pass draws
sentence pairs: segment A is one or more consecutive sentences of a
document, segment B is the sentences that follow A in the same document
(label 1) or, with probability 1/2, sentences from another document
(label 0). Pairs are packed by keras-hub's `MultiSegmentPacker`
(`[CLS] A [SEP] B [SEP]`, segment ids, `[PAD]`) and masked by keras-hub's
`MaskedLMMaskGenerator` (15% of the non-special tokens; of those 80% become
`[MASK]`, 10% a random token, 10% stay), freshly on every pass.
"""

import math
import re

import keras_hub
import numpy as np
import tensorflow as tf

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
_REQUIRED_TOKENS = ("[PAD]", "[CLS]", "[SEP]", "[MASK]")
_PARAGRAPH = re.compile(r"\n\s*\n")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_SPACES = re.compile(r"\s+")


def split_sentences(text):
    """Splits a text into sentences with a simple rule.

    Paragraphs (separated by a blank line) are split after every `.`, `!`
    or `?` followed by whitespace; other line breaks and runs of whitespace
    become one space, so wrapped lines join. Abbreviations ("e.g. this")
    split too: the rule is meant for pretraining data, not linguistics.

    Args:
        text: str.

    Returns:
        A list of non-empty sentences.

    Example:

    ```python
    from keras_llm.data.mlm_nsp import split_sentences

    split_sentences("One. Two\\nstill two?\\n\\nThree")
    # ['One.', 'Two still two?', 'Three']
    ```
    """
    sentences = []
    for paragraph in _PARAGRAPH.split(text):
        paragraph = _SPACES.sub(" ", paragraph).strip()
        if paragraph:
            sentences.extend(
                s for s in _SENTENCE_END.split(paragraph) if s.strip()
            )
    return sentences


def learn_mlm_tokenizer(texts, vocabulary_size=None, lowercase=False):
    """Learns a WordPiece tokenizer with BERT's special tokens.

    Like `keras_llm.data.learn_tokenizer(kind="wordpiece")` (keras-hub's
    `compute_word_piece_vocabulary`), but the reserved tokens are `[PAD]`
    (id 0, the padding id `keras_llm.models.BERT` assumes), `[UNK]`,
    `[CLS]`, `[SEP]` and `[MASK]`, which `mlm_nsp_dataset` needs.

    Args:
        texts: list of strings.
        vocabulary_size: int. Size of the vocabulary, special tokens
            included. Defaults to `None` (8192).
        lowercase: bool. Lowercase the text before learning and
            tokenizing. Defaults to `False`.

    Returns:
        A `keras_hub.tokenizers.WordPieceTokenizer` (int32 ids).

    Example:

    ```python
    from keras_llm.data import learn_mlm_tokenizer

    tokenizer = learn_mlm_tokenizer(["the cat sat", "the dog ran"], 40)
    tokenizer.token_to_id("[MASK]")  # 4
    ```
    """
    vocabulary_size = 8192 if vocabulary_size is None else vocabulary_size
    if (
        isinstance(vocabulary_size, bool)
        or not isinstance(vocabulary_size, int)
        or vocabulary_size <= len(SPECIAL_TOKENS)
    ):
        raise ValueError(
            "`learn_mlm_tokenizer` expects `vocabulary_size` to be an int "
            f"larger than the {len(SPECIAL_TOKENS)} special tokens. "
            f"Received: {vocabulary_size!r}."
        )
    texts = [t for t in texts if t]
    if not texts:
        raise ValueError("`learn_mlm_tokenizer` got no text to learn from.")
    # keras-hub treats a Python list as file paths: pass a tf.data.Dataset.
    data = tf.data.Dataset.from_tensor_slices(texts).batch(256)
    vocabulary = keras_hub.tokenizers.compute_word_piece_vocabulary(
        data,
        vocabulary_size=vocabulary_size,
        lowercase=lowercase,
        reserved_tokens=list(SPECIAL_TOKENS),
    )
    return keras_hub.tokenizers.WordPieceTokenizer(
        vocabulary=vocabulary,
        lowercase=lowercase,
        oov_token="[UNK]",
        dtype="int32",
    )


def special_token_ids(tokenizer):
    """The ids of `[PAD]`, `[CLS]`, `[SEP]` and `[MASK]` in a tokenizer.

    Args:
        tokenizer: a keras-hub tokenizer.

    Returns:
        A dict from token to id.

    Raises:
        ValueError: if one of them is missing, naming it.
    """
    try:
        vocabulary = list(tokenizer.get_vocabulary())
    except (AttributeError, TypeError, ValueError):
        raise ValueError(
            "`mlm_nsp_dataset` expects a keras-hub tokenizer with a "
            f"vocabulary. Received: {type(tokenizer).__name__}."
        ) from None
    index = {token: i for i, token in enumerate(vocabulary)}
    missing = [t for t in _REQUIRED_TOKENS if t not in index]
    if missing:
        raise ValueError(
            f"The tokenizer lacks the special tokens {missing} that MLM+NSP "
            "examples need; learn one with "
            "`keras_llm.data.learn_mlm_tokenizer` (reserved tokens "
            f"{list(SPECIAL_TOKENS)})."
        )
    return {t: index[t] for t in _REQUIRED_TOKENS}


def _as_sentences(documents):
    """Documents (texts or lists of sentences) as lists of sentences."""
    if isinstance(documents, (str, bytes)) or not hasattr(
        documents, "__iter__"
    ):
        raise TypeError(
            "`mlm_nsp_dataset` expects `documents` to be a list of texts or "
            f"of lists of sentences. Received: {type(documents).__name__}."
        )
    out = []
    for i, document in enumerate(documents):
        if isinstance(document, str):
            out.append(split_sentences(document))
        elif isinstance(document, (list, tuple)) and all(
            isinstance(s, str) for s in document
        ):
            out.append([s for s in document if s.strip()])
        else:
            raise TypeError(
                "`mlm_nsp_dataset` expects each document to be a text or a "
                f"list of sentences. Received document {i}: "
                f"{type(document).__name__}."
            )
    return out


def _tokenize(tokenizer, sentences, batch_size=1024):
    """Token ids of each sentence, as a list of int32 arrays."""
    out = []
    for start in range(0, len(sentences), batch_size):
        # Eagerly, keras-hub tokenizers return Python lists (10x faster here
        # than a tf.data map for a few thousand sentences).
        ids = tokenizer.tokenize(sentences[start : start + batch_size])
        if isinstance(ids, tf.RaggedTensor):
            ids = ids.to_list()
        out.extend(np.asarray(row, dtype=np.int32).reshape(-1) for row in ids)
    return out


def tokenize_sentences(documents, tokenizer):
    """Splits documents into sentences and tokenizes them.

    Args:
        documents: list of texts (split with `split_sentences`) or of lists
            of sentences.
        tokenizer: a keras-hub tokenizer.

    Returns:
        A list (one item per document that has tokens) of lists of int32
        id arrays, one per non-empty sentence.
    """
    documents = _as_sentences(documents)
    flat = [s for document in documents for s in document]
    ids = _tokenize(tokenizer, flat)
    out, start = [], 0
    for document in documents:
        sentences = [s for s in ids[start : start + len(document)] if len(s)]
        start += len(document)
        if sentences:
            out.append(sentences)
    return out


class _PairSampler:
    """Draws `(segment_a, segment_b, label)` from tokenized documents.

    A starts at a sentence that has a successor and takes following
    sentences while it stays within half the token budget (always at least
    one, never the document's last). B then fills the rest of the budget
    (always at least one sentence): from the sentence after A (label 1), or
    from a random sentence of another document (label 0).
    """

    def __init__(self, documents, budget, seed, shuffle, repeat):
        self.documents = documents
        self.budget = budget
        self.seed = seed
        self.shuffle = shuffle
        self.repeat = repeat
        self.starts = [
            (d, i)
            for d, sentences in enumerate(documents)
            for i in range(len(sentences) - 1)
        ]

    def _take(self, sentences, start, limit, stop):
        """Concatenates sentences from `start` (at least one, before
        `stop`) while the total stays within `limit` tokens."""
        ids, end = [sentences[start]], start + 1
        total = len(sentences[start])
        while end < stop and total + len(sentences[end]) <= limit:
            ids.append(sentences[end])
            total += len(sentences[end])
            end += 1
        return np.concatenate(ids), end

    def example(self, rng, d, i):
        sentences = self.documents[d]
        a, end = self._take(sentences, i, self.budget // 2, len(sentences) - 1)
        rest = max(1, self.budget - len(a))
        if rng.random() < 0.5:
            b, _ = self._take(sentences, end, rest, len(sentences))
            return a, b, 1
        other = int(rng.integers(len(self.documents) - 1))
        other += other >= d  # any document but this one
        others = self.documents[other]
        start = int(rng.integers(len(others)))
        b, _ = self._take(others, start, rest, len(others))
        return a, b, 0

    def __call__(self):
        rng = np.random.default_rng(self.seed)
        while True:
            order = (
                rng.permutation(len(self.starts))
                if self.shuffle
                else range(len(self.starts))
            )
            for k in order:
                yield self.example(rng, *self.starts[k])
            if not self.repeat:
                return


def _check_positive_int(name, value, low=1):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(
            f"`mlm_nsp_dataset` expects `{name}` to be an integer >= {low}. "
            f"Received: {name}={value!r}."
        )
    if value < low:
        raise ValueError(
            f"`mlm_nsp_dataset` expects `{name}` to be an integer >= {low}. "
            f"Received: {name}={value!r}."
        )


def mlm_nsp_dataset(
    documents,
    tokenizer,
    sequence_length,
    batch_size,
    mask_rate=0.15,
    max_predictions=None,
    seed=None,
    shuffle=True,
    repeat=False,
    drop_remainder=True,
    mask_token_rate=0.8,
    random_token_rate=0.1,
):
    """A `tf.data.Dataset` of masked-LM + next-sentence batches for BERT.

    Documents are split into sentences (`split_sentences`, unless given as
    lists of sentences) and tokenized once; pairs, packing and masks are
    drawn on the fly. Segment A is consecutive sentences of one document
    filling at most half of the `sequence_length - 3` token budget; segment
    B is, with probability 1/2, the sentences that follow A (label 1),
    otherwise sentences from a random other document (label 0). One pass
    draws one example per sentence that has a successor; with
    `repeat=True` the passes go on with fresh pairs and masks. keras-hub's
    `MultiSegmentPacker` builds `[CLS] A [SEP] B [SEP] [PAD]...`
    (truncating the longer segment first) with segment ids 0 and 1, and
    `MaskedLMMaskGenerator` picks `ceil(mask_rate * n)` of the `n`
    non-special tokens of each example (never `[CLS]`, `[SEP]`, `[PAD]`,
    `[MASK]`): 80% become `[MASK]`, 10% a random id, 10% are kept.

    Each element is `(features, labels, sample_weights)`, as
    `keras_llm.models.BertPretrainer` takes them:
    - features: `token_ids`, `segment_ids`, `padding_mask` (int32 `(B, T)`)
      and `mask_positions` (int32 `(B, P)`);
    - labels: `{"mlm": mask_ids (B, P), "nsp": (B,)}`;
    - sample_weights: `{"mlm": mask_weights (B, P), "nsp": ones (B,)}`
      (float32; padded mask slots weigh 0).

    Args:
        documents: list of texts, or of lists of sentences. At least two
            documents, and at least one with two sentences.
        tokenizer: a keras-hub tokenizer with `[PAD]`, `[CLS]`, `[SEP]` and
            `[MASK]` tokens (see `learn_mlm_tokenizer`).
        sequence_length: int (>= 5). Packed length `T`.
        batch_size: int. Examples per batch.
        mask_rate: float in (0, 1). Fraction of the non-special tokens
            selected for prediction. Defaults to `0.15`.
        max_predictions: int or `None`. `P`, the most predictions per
            example; `None` means `ceil(mask_rate * sequence_length)`.
            Defaults to `None`.
        seed: int or `None`. Seed of the pairs and the masks: the same seed
            gives the same batches. With a seed the masks are drawn one
            example at a time, in order; without one, a whole batch at a
            time in parallel (faster).
            Defaults to `None`.
        shuffle: bool. Visit the sentences in a random order each pass.
            Defaults to `True`.
        repeat: bool. An endless stream (for `fit` with `steps_per_epoch`)
            that draws fresh pairs and masks throughout. A finite dataset
            with a seed gives the same examples on every pass (as suits
            validation), so train with `repeat=True` rather than
            `Dataset.repeat()`. Defaults to `False`.
        drop_remainder: bool. Drop a last partial batch, keeping shapes
            static. Defaults to `True`.
        mask_token_rate: float. Share of the selected tokens replaced by
            `[MASK]`. Defaults to `0.8`.
        random_token_rate: float. Share replaced by a random token.
            Defaults to `0.1`.

    Returns:
        A batched, prefetched `tf.data.Dataset` (its cardinality is known).

    Raises:
        ValueError: for fewer than two documents with text, no document of
            two sentences, a tokenizer without the special tokens, fewer
            examples than one batch, or a bad size or rate.

    Example:

    ```python
    import keras_llm

    documents = [
        "The cat sat. It purred. Then it slept on the mat.",
        "Rain fell all day. The river rose. Boats stayed home.",
    ]
    tokenizer = keras_llm.data.learn_mlm_tokenizer(
        documents, vocabulary_size=100
    )
    data = keras_llm.data.mlm_nsp_dataset(
        documents, tokenizer, sequence_length=16, batch_size=2, seed=0
    )
    features, labels, weights = next(iter(data))
    features["token_ids"].shape  # (2, 16)
    ```
    """
    _check_positive_int("sequence_length", sequence_length, low=5)
    _check_positive_int("batch_size", batch_size)
    for name, value, high_ok in (
        ("mask_rate", mask_rate, False),
        ("mask_token_rate", mask_token_rate, True),
        ("random_token_rate", random_token_rate, True),
    ):
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not (0 < value < 1 or (high_ok and 0 <= value <= 1))
        ):
            raise ValueError(
                f"`mlm_nsp_dataset` expects `{name}` in "
                f"{'[0, 1]' if high_ok else '(0, 1)'}. Received: "
                f"{name}={value!r}."
            )
    if mask_token_rate + random_token_rate > 1:
        raise ValueError(
            "`mlm_nsp_dataset` expects mask_token_rate + random_token_rate "
            f"<= 1. Received: {mask_token_rate} + {random_token_rate}."
        )
    if max_predictions is None:
        max_predictions = max(1, math.ceil(mask_rate * sequence_length))
    _check_positive_int("max_predictions", max_predictions)
    ids = special_token_ids(tokenizer)
    tokenized = tokenize_sentences(documents, tokenizer)
    if len(tokenized) < 2:
        raise ValueError(
            "`mlm_nsp_dataset` needs at least 2 documents with text (the "
            "negative pairs take segment B from another document). "
            f"Received {len(tokenized)}."
        )
    sampler = _PairSampler(
        tokenized,
        budget=sequence_length - 3,
        seed=seed,
        shuffle=shuffle,
        repeat=repeat,
    )
    if not sampler.starts:
        raise ValueError(
            "`mlm_nsp_dataset` needs a document of at least 2 sentences "
            "(positive pairs are consecutive sentences); split the texts "
            "into sentences ending in '.', '!' or '?' or pass lists of "
            "sentences."
        )
    count = len(sampler.starts)
    if drop_remainder and count < batch_size and not repeat:
        raise ValueError(
            f"The documents give {count} sentence pairs per pass, fewer than "
            f"one batch of {batch_size}; use more text or a smaller batch "
            "size."
        )

    packer = keras_hub.layers.MultiSegmentPacker(
        sequence_length=sequence_length,
        start_value=ids["[CLS]"],
        end_value=ids["[SEP]"],
        pad_value=ids["[PAD]"],
        truncate="round_robin",
        dtype="int32",
    )
    masker = keras_hub.layers.MaskedLMMaskGenerator(
        vocabulary_size=tokenizer.vocabulary_size(),
        mask_selection_rate=mask_rate,
        mask_token_id=ids["[MASK]"],
        mask_selection_length=max_predictions,
        unselectable_token_ids=sorted(set(ids.values())),
        mask_token_rate=mask_token_rate,
        random_token_rate=random_token_rate,
        dtype="int32",
    )

    def pack(a, b, label):
        token_ids, segment_ids = packer((a, b))
        return token_ids, segment_ids, label

    def mask(token_ids, segment_ids, label):
        if seed is not None:
            # Inside this traced function, set_seed sets the seed of its
            # graph only: the masker's random ops then draw the same
            # sequence on every build of the dataset.
            tf.random.set_seed(seed)
        masked = masker(token_ids)
        features = {
            "token_ids": tf.cast(masked["token_ids"], tf.int32),
            "segment_ids": tf.cast(segment_ids, tf.int32),
            "padding_mask": tf.cast(
                tf.not_equal(token_ids, ids["[PAD]"]), tf.int32
            ),
            "mask_positions": tf.cast(masked["mask_positions"], tf.int32),
        }
        labels = {
            "mlm": tf.cast(masked["mask_ids"], tf.int32),
            "nsp": tf.cast(label, tf.int32),
        }
        weights = {
            "mlm": tf.cast(masked["mask_weights"], tf.float32),
            "nsp": tf.ones_like(label, tf.float32),
        }
        return features, labels, weights

    def pack_and_mask(a, b, label):
        features, labels, weights = mask(*pack(a, b, label))
        if drop_remainder:
            # Static batch dimensions, for XLA and tf.distribute.
            for part in (features, labels, weights):
                for value in part.values():
                    value.set_shape([batch_size] + value.shape[1:])
        return features, labels, weights

    # Autograph adds nothing to these functions but seconds of tracing.
    pack, mask, pack_and_mask = (
        tf.autograph.experimental.do_not_convert(f)
        for f in (pack, mask, pack_and_mask)
    )
    ds = tf.data.Dataset.from_generator(
        sampler,
        output_signature=(
            tf.TensorSpec([None], tf.int32),
            tf.TensorSpec([None], tf.int32),
            tf.TensorSpec([], tf.int32),
        ),
    )
    examples = tf.data.INFINITE_CARDINALITY if repeat else count
    ds = ds.apply(tf.data.experimental.assert_cardinality(examples))
    if seed is None:
        # Whole batches, in parallel: the masker's random draws happen in
        # whatever order threads run.
        ds = ds.ragged_batch(batch_size, drop_remainder=drop_remainder)
        ds = ds.map(pack_and_mask, num_parallel_calls=tf.data.AUTOTUNE)
    else:
        # One example at a time, in order: on a batch the masker draws the
        # rows from one random kernel in parallel loop iterations, in an
        # order that changes from run to run.
        ds = ds.map(pack, num_parallel_calls=tf.data.AUTOTUNE)
        ds = ds.map(mask)
        ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    return ds.prefetch(tf.data.AUTOTUNE)
