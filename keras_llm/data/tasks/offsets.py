"""WordPiece tokenization with character offsets into the original text.

keras-hub's `WordPieceTokenizer` gives ids but no offsets, and
tensorflow-text's offset-giving tokenizers pre-tokenize differently (their
lowercasing is not keras-hub's, and their offsets are bytes of the
normalised text). This module repeats keras-hub's own steps (strip accents,
split on whitespace, punctuation and CJK with keras-hub's patterns, case
fold each word, greedy longest-match WordPiece) while tracking, for every
character of the normalised text, the span of original characters it came
from. The ids are the keras-hub tokenizer's ids (tests check it on text with
accents, capitals, punctuation and unknown words); the offsets are Python
string indices into the original text.
"""

import unicodedata

import keras_hub
import numpy as np
from keras_hub.src.tokenizers import word_piece_tokenizer as kh_word_piece
from keras_hub.src.utils.tensor_utils import casefold_utf8

# Pinned with keras-hub 0.32: the word splitting patterns and the byte limit
# past which tf-text's FastWordpieceTokenizer maps a word to the oov token.
_get_split_patterns = kh_word_piece._get_split_patterns
MAX_BYTES_PER_WORD = kh_word_piece.MAX_BYTES_PER_WORD


def _clusters(text):
    """Splits text into a base character and its combining marks."""
    start = 0
    for i in range(1, len(text) + 1):
        if i == len(text) or not unicodedata.combining(text[i]):
            yield start, i
            start = i


def _strip_accents(text):
    return "".join(
        c
        for c in unicodedata.normalize("NFD", text)
        if unicodedata.category(c) != "Mn"
    )


def _map_chars(text, transform):
    """Applies `transform` per cluster, tracking source spans.

    Returns `(new_text, starts, ends)`: character `i` of `new_text` came
    from `text[starts[i]:ends[i]]`. If transforming cluster by cluster does
    not give `transform(text)` (composition across clusters, e.g. Hangul
    jamo), every character maps to the whole of `text`: the ids stay exact,
    the offsets widen to the word.
    """
    if text.isascii():
        # ASCII is its own NFD and NFKC; case folding is `lower()`.
        identity_starts = range(len(text))
        identity_ends = range(1, len(text) + 1)
        if transform is casefold_utf8:
            return text.lower(), identity_starts, identity_ends
        if transform is _strip_accents:
            return text, identity_starts, identity_ends
    pieces, starts, ends = [], [], []
    for a, b in _clusters(text):
        piece = transform(text[a:b])
        pieces.append(piece)
        starts.extend([a] * len(piece))
        ends.extend([b] * len(piece))
    new_text = "".join(pieces)
    whole = transform(text)
    if new_text != whole:
        return whole, [0] * len(whole), [len(text)] * len(whole)
    return new_text, starts, ends


class OffsetWordPiece:
    """Tokenizes like a keras-hub `WordPieceTokenizer`, with offsets.

    Args:
        tokenizer: a `keras_hub.tokenizers.WordPieceTokenizer` (or a
            subclass such as `keras_hub.tokenizers.BertTokenizer`).

    Example:

    ```python
    import keras_hub

    from keras_llm.data.tasks import OffsetWordPiece

    vocab = ["[PAD]", "[UNK]", "the", "qu", "##ick", "fox", "."]
    tokenizer = keras_hub.tokenizers.WordPieceTokenizer(
        vocabulary=vocab, lowercase=True
    )
    ids, starts, ends = OffsetWordPiece(tokenizer)("The quick fox.")
    print(ids, starts, ends)  # [2 3 4 5 6] [ 0  4  6 10 13] [ 3  6  9 13 14]
    ```
    """

    def __init__(self, tokenizer):
        if not isinstance(tokenizer, keras_hub.tokenizers.WordPieceTokenizer):
            raise TypeError(
                "Character offsets need a keras-hub WordPieceTokenizer "
                f"(e.g. from keras_llm.data.learn_tokenizer(texts, "
                f"kind='wordpiece')). Received: {type(tokenizer).__name__}."
            )
        self.tokenizer = tokenizer
        vocabulary = tokenizer.get_vocabulary()
        self.token_to_id = {token: i for i, token in enumerate(vocabulary)}
        self.oov_id = self.token_to_id[tokenizer.oov_token]
        self.suffix = tokenizer.suffix_indicator
        special = None
        if tokenizer.split and tokenizer.special_tokens_in_strings:
            special = list(tokenizer.special_tokens)
            special.extend(tokenizer._init_special_tokens or [])
        self.special_tokens = tuple(special) if special else ()
        self.delimiter, self.keep = _get_split_patterns(
            tokenizer.split_on_cjk, self.special_tokens
        )
        self._word_cache = {}

    def _word_pieces(self, word):
        """Greedy longest-match-first WordPiece: `[(id, start, end)]`."""
        cached = self._word_cache.get(word)
        if cached is not None:
            return cached
        pieces = []
        if len(word.encode("utf-8")) > MAX_BYTES_PER_WORD:
            pieces = [(self.oov_id, 0, len(word))]
            start = len(word)
        else:
            start = 0
        while start < len(word):
            end, found = len(word), None
            while start < end:
                piece = word[start:end]
                if start > 0:
                    piece = self.suffix + piece
                found = self.token_to_id.get(piece)
                if found is not None:
                    break
                end -= 1
            if found is None:
                pieces = [(self.oov_id, 0, len(word))]
                break
            pieces.append((found, start, end))
            start = end
        self._word_cache[word] = pieces
        return pieces

    def _words(self, text):
        """Yields `(start, end)` spans of the words keras-hub splits into."""
        if not self.tokenizer.split:
            if text:
                yield 0, len(text)
            return
        position = 0
        for match in self.delimiter.finditer(text):
            if match.start() > position:
                yield position, match.start()
            if self.keep.fullmatch(match.group()):
                yield match.start(), match.end()
            position = match.end()
        if position < len(text):
            yield position, len(text)

    def __call__(self, text):
        """Tokenizes one string.

        Args:
            text: a string.

        Returns:
            `(ids, starts, ends)`, three `np.int32` arrays: token `i` is
            `ids[i]` and came from `text[starts[i]:ends[i]]`.
        """
        tok = self.tokenizer
        if tok.strip_accents:
            norm, src_starts, src_ends = _map_chars(text, _strip_accents)
        else:
            norm = text
            src_starts = range(len(text))
            src_ends = range(1, len(text) + 1)
        ids, starts, ends = [], [], []
        for a, b in self._words(norm):
            word = norm[a:b]
            if tok.lowercase and word not in self.special_tokens:
                word, w_starts, w_ends = _map_chars(word, casefold_utf8)
            else:
                w_starts = range(len(word))
                w_ends = range(1, len(word) + 1)
            for token_id, p, q in self._word_pieces(word):
                ids.append(token_id)
                starts.append(src_starts[a + w_starts[p]])
                ends.append(src_ends[a + w_ends[q - 1] - 1])
        return (
            np.asarray(ids, np.int32),
            np.asarray(starts, np.int32),
            np.asarray(ends, np.int32),
        )


def tokenize_with_offsets(tokenizer, text):
    """Token ids and character offsets of one string.

    Args:
        tokenizer: a keras-hub `WordPieceTokenizer`.
        text: a string.

    Returns:
        `(ids, starts, ends)`, `np.int32` arrays; `text[starts[i]:ends[i]]`
        is the text of token `i`, and `ids` equal `tokenizer(text)`.

    Example:

    ```python
    import keras_hub

    from keras_llm.data.tasks import tokenize_with_offsets

    vocab = ["[PAD]", "[UNK]", "hello", "world", "!"]
    tokenizer = keras_hub.tokenizers.WordPieceTokenizer(vocabulary=vocab)
    ids, starts, ends = tokenize_with_offsets(tokenizer, "hello  world!")
    print(ids, starts, ends)  # [2 3 4] [ 0  7 12] [ 5 12 13]
    ```
    """
    return OffsetWordPiece(tokenizer)(text)
