"""Learning, saving and loading tokenizer vocabularies, and their coverage.

Four kinds, each learned by the field's library and returned as a keras-hub
tokenizer (so it runs inside `tf.data`):

- `"character"`: every character seen (`CharacterTokenizer`), or the most
  frequent ones when `vocabulary_size` is given.
- `"wordpiece"`: keras-hub `compute_word_piece_vocabulary` and
  `WordPieceTokenizer`.
- `"sentencepiece"`: keras-hub `compute_sentence_piece_proto` (unigram) and
  `SentencePieceTokenizer`.
- `"bpe"`: byte-level BPE, as in GPT-2. keras-hub has no BPE trainer
  (keras-hub#426), so the `tokenizers` package trains it (`models.BPE` with
  the GPT-2 `ByteLevel` pre-tokenizer, every byte in the alphabet, so no text
  is ever unknown); its vocabulary and merges load into keras-hub's
  `BytePairTokenizer`.

Hand-written here, and why:

- `ByteLevelBytePairTokenizer`, a two-line subclass of keras-hub's
  `BytePairTokenizer`. keras-hub 0.32 runs the `tokenizers` package outside
  `tf.data` and its own TF ops inside it; the former is built with
  `pre_tokenizers.Split(<pattern as a plain str>)`, which `tokenizers` reads
  as a literal string, so eager calls skip the GPT-2 word split and give
  other ids than `tf.data` wherever spaces repeat (`"a  b"`). The subclass
  sets the GPT-2 `ByteLevel` pre-tokenizer, so eager calls, `tf.data` and
  the trained `tokenizers` model agree id for id. The saved
  `vocabulary.json` and `merges.txt` still load into a plain
  `BytePairTokenizer`, which gives the same ids inside `tf.data`, except
  for a run of whitespace that ends a text: keras-hub's TF ops split off
  its last character (`"x  "` gives `Ġ Ġ`, GPT-2's regex `ĠĠ`).
- the single-file format (`tokenizer.json`): keras-hub stores vocabularies
  as preset assets beside a model config; one JSON file holding the
  keras config and the vocabulary (merges, SentencePiece proto) lets
  `keras-llm generate` find the tokenizer next to a model file. Saving into a
  folder also writes keras-hub's asset files (`vocabulary.txt`,
  `vocabulary.json` + `merges.txt`, `vocabulary.spm`) for other tools.
- `vocabulary_coverage`: no library reports unknown-token rate and tokens
  per word for an arbitrary keras-hub tokenizer; it tokenizes with the
  tokenizer itself, in `tf.data`, and counts.

Texts may be a list or any iterable (a generator): the character, WordPiece
and BPE trainers read them once as a stream. SentencePiece's trainer holds
its sentences in memory whatever the input; the stream is written to a
temporary file of lines (longer lines cut at spaces below SentencePiece's
4192-byte sentence limit, which it would otherwise drop silently), which
keras-hub hands to it.
"""

import base64
import collections
import contextlib
import json
import os
import re
import sys
import tempfile

import keras
import keras_hub
import numpy as np
import tensorflow as tf

from keras_llm.data.character_tokenizer import CharacterTokenizer
from keras_llm.errors import UserError

# Every kind `learn_tokenizer` learns.
VOCABULARY_KINDS = ("character", "wordpiece", "sentencepiece", "bpe")
# The kinds `keras-llm pretrain` and `tune` offer (`--tokenizer`).
TOKENIZER_KINDS = ("character", "wordpiece")
TOKENIZER_FILE = "tokenizer.json"
DEFAULT_VOCABULARY_SIZE = 8192
WORDPIECE_RESERVED_TOKENS = ("[PAD]", "[UNK]", "[BOS]", "[EOS]")
BPE_SPECIAL_TOKENS = ("<|endoftext|>",)
BYTE_ALPHABET_SIZE = 256
# SentencePiece skips sentences longer than 4192 bytes (its default
# `max_sentence_length`, which keras-hub does not expose).
SENTENCEPIECE_MAX_LINE_BYTES = 4000
_FORMAT = 2


@keras.saving.register_keras_serializable(package="keras_llm")
class ByteLevelBytePairTokenizer(keras_hub.tokenizers.BytePairTokenizer):
    """keras-hub's `BytePairTokenizer`, with GPT-2 word splits when eager.

    Identical to `keras_hub.tokenizers.BytePairTokenizer` inside `tf.data`.
    Outside it, keras-hub 0.32 runs a `tokenizers` model whose word split is
    a no-op (see the module docstring); this sets the GPT-2 `ByteLevel`
    pre-tokenizer instead, so eager and `tf.data` ids agree.

    Args:
        vocabulary: dict of token to id, or a `vocabulary.json` path.
        merges: list of `"a b"` merge rules, or a `merges.txt` path.
        **kwargs: `BytePairTokenizer` arguments.

    Example:

    ```python
    from keras_llm.data import learn_tokenizer

    tokenizer = learn_tokenizer(["hello world"] * 10, "bpe", 300)
    tokenizer.detokenize(tokenizer.tokenize("héllo 😀"))  # 'héllo 😀'
    ```
    """

    def _set_vocabulary_and_merges_tokenizers(self, vocabulary, merges):
        from tokenizers import pre_tokenizers

        super()._set_vocabulary_and_merges_tokenizers(vocabulary, merges)
        self._tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(
            add_prefix_space=self.add_prefix_space, use_regex=True
        )


class _TextStream:
    """Iterates texts once or more, checking types and counting them."""

    def __init__(self, texts, caller):
        self._texts = [texts] if isinstance(texts, str) else texts
        self._caller = caller
        self.documents = 0
        self.characters = 0
        self.error = None

    def __iter__(self):
        self.documents = self.characters = 0
        for i, text in enumerate(self._texts):
            text = getattr(text, "text", text)  # a `Document`
            if not isinstance(text, str):
                self.error = ValueError(
                    f"`{self._caller}` expects texts as strings; text {i} "
                    f"is a {type(text).__name__}."
                )
                return
            if text:
                self.documents += 1
                self.characters += len(text)
                yield text

    def check(self):
        if self.error is not None:
            raise self.error
        if not self.characters:
            raise ValueError(f"`{self._caller}` got no text.")


def _check_kind(kind):
    if kind not in VOCABULARY_KINDS:
        raise ValueError(
            f"Unknown tokenizer kind {kind!r}. Expected one of "
            f"{list(VOCABULARY_KINDS)}."
        )


def _check_vocabulary_size(kind, vocabulary_size):
    smallest = {
        "character": 2,
        "wordpiece": len(WORDPIECE_RESERVED_TOKENS) + 1,
        "sentencepiece": 5,
        "bpe": BYTE_ALPHABET_SIZE + len(BPE_SPECIAL_TOKENS),
    }[kind]
    if (
        isinstance(vocabulary_size, bool)
        or not isinstance(vocabulary_size, (int, np.integer))
        or vocabulary_size < smallest
    ):
        why = {
            "bpe": f"{BYTE_ALPHABET_SIZE} bytes + {BPE_SPECIAL_TOKENS[0]}",
            "wordpiece": "the reserved tokens + 1",
            "sentencepiece": "4 special tokens + 1",
            "character": "[UNK] + 1 character",
        }[kind]
        raise ValueError(
            f"`vocabulary_size` for {kind!r} must be an int >= {smallest} "
            f"({why}). Received: {vocabulary_size!r}."
        )
    return int(vocabulary_size)


def learn_tokenizer(texts, kind="character", vocabulary_size=None):
    """Learns a tokenizer's vocabulary from documents.

    Args:
        texts: strings: a list, or any iterable (read once, as a stream,
            except by SentencePiece, see the module docstring). `Document`s
            are read by their `.text`.
        kind: one of `VOCABULARY_KINDS`: `"character"` (the characters seen;
            id 0 is `[UNK]`), `"wordpiece"` (keras-hub
            `compute_word_piece_vocabulary`; reserved `[PAD]`, `[UNK]`,
            `[BOS]`, `[EOS]`), `"sentencepiece"` (keras-hub
            `compute_sentence_piece_proto`, unigram; `<pad>`, `<unk>`, `<s>`,
            `</s>`) or `"bpe"` (byte-level BPE trained by the `tokenizers`
            package; `<|endoftext|>` is id 0). Defaults to `"character"`.
        vocabulary_size: int, the largest vocabulary to learn, special tokens
            included; a small corpus may give fewer. `None` means every
            character for `"character"` and 8192 for the others.

    Returns:
        A keras-hub tokenizer: `CharacterTokenizer`, `WordPieceTokenizer`,
        `SentencePieceTokenizer` or `ByteLevelBytePairTokenizer` (a
        `BytePairTokenizer`), all with int32 ids.

    Raises:
        ValueError: for an unknown kind, a bad or too small
            `vocabulary_size`, texts that are not strings, or no text.

    Example:

    ```python
    from keras_llm.data import learn_tokenizer

    texts = ["the cat sat on the mat", "the dog sat on the log"] * 20
    tokenizer = learn_tokenizer(texts, "wordpiece", vocabulary_size=60)
    tokenizer.tokenize("the cat sat")
    ```
    """
    _check_kind(kind)
    if vocabulary_size is not None or kind != "character":
        if vocabulary_size is None:
            vocabulary_size = DEFAULT_VOCABULARY_SIZE
        vocabulary_size = _check_vocabulary_size(kind, vocabulary_size)
    stream = _TextStream(texts, "learn_tokenizer")
    learn = {
        "character": _learn_character,
        "wordpiece": _learn_wordpiece,
        "sentencepiece": _learn_sentencepiece,
        "bpe": _learn_bpe,
    }[kind]
    return learn(stream, vocabulary_size)


def _learn_character(stream, vocabulary_size):
    counts = collections.Counter()
    for text in stream:
        counts.update(text)
    stream.check()
    chars = sorted(counts)
    if vocabulary_size is not None and len(chars) >= vocabulary_size:
        # Keep the most frequent ones (ties by code point), then order by
        # code point like `CharacterTokenizer.from_texts`.
        ranked = sorted(chars, key=lambda c: (-counts[c], c))
        chars = sorted(ranked[: vocabulary_size - 1])
    return CharacterTokenizer(vocabulary=chars)


def _learn_wordpiece(stream, vocabulary_size):
    # keras-hub treats a Python list as file paths, so pass a tf.data.Dataset.
    data = tf.data.Dataset.from_generator(
        lambda: iter(stream),
        output_signature=tf.TensorSpec(shape=(), dtype=tf.string),
    ).batch(256)
    try:
        vocabulary = keras_hub.tokenizers.compute_word_piece_vocabulary(
            data,
            vocabulary_size=vocabulary_size,
            reserved_tokens=list(WORDPIECE_RESERVED_TOKENS),
        )
    except Exception:
        stream.check()  # no text, or not strings: say so
        raise
    stream.check()
    return keras_hub.tokenizers.WordPieceTokenizer(
        vocabulary=vocabulary, oov_token="[UNK]", dtype="int32"
    )


def _sentencepiece_lines(text):
    """The non-empty lines of `text`, cut at spaces below the byte limit."""
    for line in text.splitlines():
        line = line.strip()
        while len(line.encode("utf-8")) > SENTENCEPIECE_MAX_LINE_BYTES:
            head = line.encode("utf-8")[:SENTENCEPIECE_MAX_LINE_BYTES]
            head = head.decode("utf-8", errors="ignore")
            cut = head.rfind(" ")
            cut = cut if cut > 0 else len(head)
            yield line[:cut]
            line = line[cut:].strip()
        if line:
            yield line


@contextlib.contextmanager
def _native_stderr_to(path):
    """Sends what C++ code writes to stderr (fd 2) to `path`."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(path, "wb") as f:
            os.dup2(f.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _learn_sentencepiece(stream, vocabulary_size):
    with tempfile.TemporaryDirectory(prefix="keras_llm_spm_") as tmp:
        lines_path = os.path.join(tmp, "lines.txt")
        with open(lines_path, "w", encoding="utf-8") as f:
            for text in stream:
                for line in _sentencepiece_lines(text):
                    f.write(line + "\n")
        stream.check()
        log_path = os.path.join(tmp, "sentencepiece.log")
        size, proto = vocabulary_size, None
        while proto is None:
            try:
                with _native_stderr_to(log_path):
                    proto = keras_hub.tokenizers.compute_sentence_piece_proto(
                        [lines_path], vocabulary_size=size
                    )
            except RuntimeError as e:
                # SentencePiece refuses more pieces than the corpus gives and
                # says how many it can: learn that many (at most `size`).
                found = re.search(r"too high.*<= (\d+)", str(e))
                if found and 5 <= int(found.group(1)) < size:
                    size = int(found.group(1))
                    continue
                raise ValueError(
                    "SentencePiece could not learn a vocabulary of "
                    f"{vocabulary_size}: {str(e).strip().splitlines()[-1]}"
                ) from e
    return keras_hub.tokenizers.SentencePieceTokenizer(
        proto=proto, dtype="int32"
    )


def train_byte_level_bpe(texts, vocabulary_size=DEFAULT_VOCABULARY_SIZE):
    """Trains a byte-level BPE model with the `tokenizers` package.

    GPT-2's recipe: the `ByteLevel` pre-tokenizer (GPT-2 word split, bytes
    mapped to printable characters), all 256 bytes in the initial alphabet,
    and `<|endoftext|>` as id 0.

    Args:
        texts: strings: a list or any iterable (read once).
        vocabulary_size: int, the largest vocabulary, 256 bytes and the
            special token included. Defaults to 8192.

    Returns:
        A `tokenizers.Tokenizer`. `bpe_tokenizer_from(model)` turns it into
        the keras-hub tokenizer.

    Raises:
        ValueError: for `vocabulary_size` below 257 or no text.

    Example:

    ```python
    from keras_llm.data.vocab import train_byte_level_bpe

    model = train_byte_level_bpe(["hello world"] * 10, 300)
    model.encode("hello").ids
    ```
    """
    from tokenizers import Tokenizer
    from tokenizers import decoders
    from tokenizers import models
    from tokenizers import pre_tokenizers
    from tokenizers import trainers

    vocabulary_size = _check_vocabulary_size("bpe", vocabulary_size)
    stream = texts
    if not isinstance(stream, _TextStream):
        stream = _TextStream(texts, "train_byte_level_bpe")
    model = Tokenizer(models.BPE())
    model.pre_tokenizer = pre_tokenizers.ByteLevel(
        add_prefix_space=False, use_regex=True
    )
    model.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocabulary_size,
        special_tokens=list(BPE_SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    model.train_from_iterator(iter(stream), trainer=trainer)
    stream.check()
    return model


def bpe_tokenizer_from(model):
    """A keras-hub tokenizer from a trained byte-level `tokenizers` BPE.

    Args:
        model: a `tokenizers.Tokenizer` with a BPE model and the
            `ByteLevel` pre-tokenizer (`train_byte_level_bpe`).

    Returns:
        A `ByteLevelBytePairTokenizer` (a keras-hub `BytePairTokenizer`).
    """
    state = json.loads(model.to_str())["model"]
    merges = [
        " ".join(m) if isinstance(m, (list, tuple)) else m
        for m in state["merges"]
    ]
    specials = [
        t.content for t in model.get_added_tokens_decoder().values()
    ] or list(BPE_SPECIAL_TOKENS)
    return ByteLevelBytePairTokenizer(
        vocabulary=state["vocab"],
        merges=merges,
        unsplittable_tokens=specials,
        dtype="int32",
    )


def _learn_bpe(stream, vocabulary_size):
    return bpe_tokenizer_from(train_byte_level_bpe(stream, vocabulary_size))


def tokenizer_kind(tokenizer):
    """The kind (`VOCABULARY_KINDS`) of a keras-hub tokenizer.

    Raises:
        ValueError: for a tokenizer of none of the kinds.
    """
    for cls, kind in (
        (CharacterTokenizer, "character"),
        (keras_hub.tokenizers.WordPieceTokenizer, "wordpiece"),
        (keras_hub.tokenizers.SentencePieceTokenizer, "sentencepiece"),
        (keras_hub.tokenizers.BytePairTokenizer, "bpe"),
    ):
        if isinstance(tokenizer, cls):
            return kind
    raise ValueError(
        f"cannot save a {type(tokenizer).__name__}; expected a tokenizer of "
        f"kind {', '.join(VOCABULARY_KINDS)}"
    )


def save_tokenizer(tokenizer, path):
    """Writes a tokenizer (its config and vocabulary) as one JSON file.

    The JSON file holds everything `load_tokenizer` needs: the kind, the
    keras config and the vocabulary (plus merges for BPE, the base64 proto
    for SentencePiece). Saving into a folder also writes keras-hub's asset
    files there (`vocabulary.txt` for WordPiece, `vocabulary.json` and
    `merges.txt` for BPE, `vocabulary.spm` for SentencePiece), which
    keras-hub's tokenizer classes and other tools read.

    Args:
        tokenizer: a tokenizer of one of `VOCABULARY_KINDS`.
        path: a file path, or an existing folder (then `tokenizer.json` in
            it).

    Returns:
        The path of the JSON file written.

    Raises:
        ValueError: for a tokenizer of another kind.

    Example:

    ```python
    from keras_llm.data import learn_tokenizer, save_tokenizer

    import os

    tokenizer = learn_tokenizer(["hello world"] * 10, "bpe", 300)
    os.makedirs("tok", exist_ok=True)
    save_tokenizer(tokenizer, "tok")  # tok/tokenizer.json, tok/merges.txt, ...
    ```
    """
    kind = tokenizer_kind(tokenizer)
    folder = None
    path = os.fspath(path)
    if os.path.isdir(path):
        folder = path
        path = os.path.join(path, TOKENIZER_FILE)
    payload = {
        "format": _FORMAT,
        "kind": kind,
        "tokenizer": keras.saving.serialize_keras_object(tokenizer),
        "vocabulary": list(tokenizer.get_vocabulary()),
    }
    if kind == "bpe":
        payload["vocabulary"] = dict(tokenizer.vocabulary)
        payload["merges"] = list(tokenizer.merges)
    elif kind == "sentencepiece":
        payload["proto"] = base64.b64encode(tokenizer.proto).decode("ascii")
    if folder is not None and kind != "character":
        tokenizer.save_assets(folder)
        payload["files"] = sorted(tokenizer.file_assets)
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(payload, f, ensure_ascii=False)
    os.replace(tmp, path)
    return path


def load_tokenizer(path):
    """Reads a tokenizer written by `save_tokenizer`.

    Args:
        path: the JSON file, or the folder holding `tokenizer.json`.

    Returns:
        The tokenizer, giving the same ids as the one saved.

    Raises:
        UserError: if the file is missing or is not a saved tokenizer.

    Example:

    ```python
    from keras_llm.data import learn_tokenizer, load_tokenizer, save_tokenizer

    path = save_tokenizer(learn_tokenizer(["hello"]), "tokenizer.json")
    tokenizer = load_tokenizer(path)
    ```
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        path = os.path.join(path, TOKENIZER_FILE)
    if not os.path.isfile(path):
        raise UserError(f"tokenizer file {path} does not exist")
    try:
        with open(path, encoding="utf-8") as f:
            payload = json.load(f)
        config, vocabulary = payload["tokenizer"], payload["vocabulary"]
        tokenizer = keras.saving.deserialize_keras_object(config)
        # Files of format 1 have no "kind": they held characters or
        # WordPiece, which both take `set_vocabulary`.
        kind = payload.get("kind") or tokenizer_kind(tokenizer)
        if kind == "bpe":
            tokenizer.set_vocabulary_and_merges(vocabulary, payload["merges"])
        elif kind == "sentencepiece":
            tokenizer.set_proto(base64.b64decode(payload["proto"]))
        else:
            tokenizer.set_vocabulary(vocabulary)
    except (
        json.JSONDecodeError,
        KeyError,
        TypeError,
        ValueError,
        UnicodeDecodeError,
    ) as e:
        raise UserError(f"{path} is not a keras_llm tokenizer file") from e
    return tokenizer


def _unknown_ids(tokenizer):
    """Ids that stand for unknown text (none for byte-level BPE)."""
    kind = tokenizer_kind(tokenizer)
    if kind == "bpe":
        return []
    if kind == "sentencepiece":
        import sentencepiece

        processor = sentencepiece.SentencePieceProcessor()
        processor.LoadFromSerializedProto(tokenizer.proto)
        return [processor.unk_id()]
    return [int(tokenizer.token_to_id(tokenizer.oov_token))]


def vocabulary_coverage(tokenizer, texts, batch_size=64):
    """How well a vocabulary covers (held-out) text.

    Tokenizes with the tokenizer itself, in batches, and counts. Words are whitespace-separated
    (`str.split()`), characters are Unicode code points.

    Args:
        tokenizer: a tokenizer of one of `VOCABULARY_KINDS`.
        texts: strings: a list or any iterable (read once).
        batch_size: texts tokenized per step. Defaults to `64`.

    Returns:
        A dict: `unknown_rate` (share of tokens that are the unknown token;
        0 for byte-level BPE by construction), `tokens_per_word`,
        `tokens_per_character`, `tokens`, `unknown_tokens`, `words`,
        `characters`, `documents`, `vocabulary_size` and `kind`.

    Raises:
        ValueError: for texts that are not strings, or no text.

    Example:

    ```python
    from keras_llm.data import learn_tokenizer
    from keras_llm.data.vocab import vocabulary_coverage

    tokenizer = learn_tokenizer(["the cat sat"] * 20, "wordpiece", 30)
    vocabulary_coverage(tokenizer, ["the dog sat"])["unknown_rate"]
    ```
    """
    kind = tokenizer_kind(tokenizer)
    unknown = np.asarray(_unknown_ids(tokenizer), np.int64)
    stream = _TextStream(texts, "vocabulary_coverage")
    words = tokens = unknown_tokens = 0
    batch = []

    def count(batch):
        ids = tokenizer.tokenize(batch)
        if isinstance(ids, tf.RaggedTensor):
            ids = ids.flat_values.numpy()
        elif isinstance(ids, list):  # keras-hub's Python path: lists of ids
            ids = [i for row in ids for i in np.asarray(row).ravel()]
        ids = np.asarray(ids, np.int64).ravel()
        return ids.size, int(np.sum(np.isin(ids, unknown) | (ids < 0)))

    for text in stream:
        words += len(text.split())
        batch.append(text)
        if len(batch) == batch_size:
            n, u = count(batch)
            tokens, unknown_tokens, batch = tokens + n, unknown_tokens + u, []
    if batch:
        n, u = count(batch)
        tokens, unknown_tokens = tokens + n, unknown_tokens + u
    stream.check()
    characters = stream.characters
    return {
        "kind": kind,
        "vocabulary_size": int(tokenizer.vocabulary_size()),
        "documents": stream.documents,
        "characters": characters,
        "words": words,
        "tokens": tokens,
        "unknown_tokens": unknown_tokens,
        "unknown_rate": unknown_tokens / tokens if tokens else 0.0,
        "tokens_per_word": tokens / words if words else 0.0,
        "tokens_per_character": tokens / characters,
    }
