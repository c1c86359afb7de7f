"""Text normalisation and Gopher-style quality filters: the `clean` stage.

Unicode repair (mojibake such as "cafÃ©", HTML entities, curly quotes,
ligatures, fullwidth forms) is done by `ftfy` and NFC normalisation by
`unicodedata`. The quality rules follow the Gopher rules (Rae et al. 2021,
"Scaling Language Models", appendix A1.1): document length, mean word
length, symbol-to-word ratio, lines ending in an ellipsis or starting with
a bullet, words without a letter, stop words, and the repetition rules
(duplicate lines and paragraphs, most frequent 2-4-grams, duplicate
5-10-grams). No library of the field offers these rules as a plain function
over a string without its own pipeline framework (datatrove, dolma,
nemo-curator each wrap them in their own document and executor types), so
they are written here, vectorised with numpy where they count n-grams.

Speed (this stage is on the throughput path). `ftfy.fix_text` runs about
2-3 MB/s on text with non-ASCII characters, so `normalize_text` calls it
only where it can change something, with results identical to calling it on
the whole text (ftfy works line by line, and the skipped fixers are those
whose characters are absent): ASCII lines without `&` or escape sequences
skip ftfy, and ftfy's ligature, width and control-character fixers are
turned off for a line that holds none of their characters. The n-gram
rules sort only the positions whose (n-1)-grams repeat.

Measured (CPU time, `time.process_time`, one process on this 2-core machine
while other jobs loaded it, load average ~7) on 20 MB of generated
English-like documents (~2.2 KB each; one paragraph in five with curly
quotes or accented letters): `normalize_text` 7.4 MB/s, `quality_issues`
8.3 MB/s, `clean` 3.6 MB/s. `benchmarks/data_pipeline.py` measures it on the
issue's corpus.

Example:

```python
from keras_llm.data.clean import CleanConfig
from keras_llm.data.clean import quality_issues

text = "Buy now!!! " * 3
print(quality_issues(text, CleanConfig()))  # ['too_few_words', ...]
print(quality_issues(text, CleanConfig(min_words=5, disabled=("top_2gram",))))
```
"""

import collections
import dataclasses
import itertools
import re
import unicodedata

import ftfy
import numpy as np
from ftfy import chardata

from keras_llm.data.documents import StageReport
from keras_llm.errors import UserError

GOPHER_STOP_WORDS = ("the", "be", "to", "of", "and", "that", "have", "with")
BULLETS = ("•", "‣", "◦", "⁃", "∙", "·", "-", "*", "–", "—", "●", "▪", "►")
ELLIPSES = ("...", "…")

TOP_NGRAM_DEFAULTS = {2: 0.20, 3: 0.18, 4: 0.16}
DUPLICATE_NGRAM_DEFAULTS = {
    5: 0.15,
    6: 0.14,
    7: 0.13,
    8: 0.12,
    9: 0.11,
    10: 0.10,
}

BASE_RULES = (
    "too_few_words",
    "too_many_words",
    "mean_word_length",
    "symbol_ratio",
    "ellipsis_lines",
    "bullet_lines",
    "alpha_words",
    "stop_words",
    "duplicate_lines",
    "duplicate_line_chars",
    "duplicate_paragraphs",
    "duplicate_paragraph_chars",
)


@dataclasses.dataclass
class CleanConfig:
    """Thresholds of the quality rules (Gopher defaults).

    A document fails a rule when its measure is outside the bound; each
    rule's reason is the stable word given in brackets. A threshold set to
    `None`, or the reason listed in `disabled`, turns the rule off.

    Attributes:
        min_words: fewer whitespace-separated words fail
            ("too_few_words").
        max_words: more words fail ("too_many_words"); such a document is
            not checked further (a giant page must not cost memory).
        min_mean_word_length: mean characters per word below this fail
            ("mean_word_length").
        max_mean_word_length: mean characters per word above this fail
            (same reason).
        max_symbol_to_word_ratio: `#` per word, or ellipses (`...`, `…`)
            per word, above this fail ("symbol_ratio"); Gopher checks each
            symbol on its own.
        max_ellipsis_line_fraction: fraction of non-empty lines ending in an
            ellipsis ("ellipsis_lines").
        max_bullet_line_fraction: fraction of non-empty lines starting with
            a bullet (`BULLETS`) ("bullet_lines").
        min_alpha_word_fraction: fraction of words holding at least one
            letter ("alpha_words").
        min_stop_words: occurrences of `stop_words` (case-insensitive, whole
            words) needed ("stop_words").
        stop_words: the stop-word list (Gopher's English list).
        language_agnostic: turns the stop-word rule off (for languages
            other than English).
        max_duplicate_line_fraction: fraction of non-empty lines that repeat
            an earlier line ("duplicate_lines").
        max_duplicate_line_char_fraction: fraction of characters in those
            repeated lines ("duplicate_line_chars").
        max_duplicate_paragraph_fraction: the same for paragraphs (split at
            blank lines) ("duplicate_paragraphs").
        max_duplicate_paragraph_char_fraction: ("duplicate_paragraph_chars").
        max_top_ngram_char_fraction: `{n: fraction}`: the characters of the
            most frequent word n-gram (counted once per occurrence, only if
            it occurs more than once) over all word characters
            ("top_{n}gram").
        max_duplicate_ngram_char_fraction: `{n: fraction}`: the characters
            of words covered by repeated occurrences of word n-grams (the
            first occurrence not counted, overlaps counted once) over all
            word characters ("duplicate_{n}gram").
        disabled: reasons of rules to skip.

    Raises:
        UserError: for a threshold out of range or an unknown rule name.

    Example:

    ```python
    from keras_llm.data.clean import CleanConfig

    config = CleanConfig(min_words=20, disabled=("bullet_lines",))
    print(config.rules()[:3])  # ('too_few_words', 'too_many_words', ...)
    ```
    """

    min_words: int | None = 50
    max_words: int | None = 100_000
    min_mean_word_length: float | None = 3
    max_mean_word_length: float | None = 10
    max_symbol_to_word_ratio: float | None = 0.1
    max_ellipsis_line_fraction: float | None = 0.3
    max_bullet_line_fraction: float | None = 0.9
    min_alpha_word_fraction: float | None = 0.8
    min_stop_words: int | None = 2
    stop_words: tuple = GOPHER_STOP_WORDS
    language_agnostic: bool = False
    max_duplicate_line_fraction: float | None = 0.30
    max_duplicate_line_char_fraction: float | None = 0.20
    max_duplicate_paragraph_fraction: float | None = 0.30
    max_duplicate_paragraph_char_fraction: float | None = 0.20
    max_top_ngram_char_fraction: dict = dataclasses.field(
        default_factory=lambda: dict(TOP_NGRAM_DEFAULTS)
    )
    max_duplicate_ngram_char_fraction: dict = dataclasses.field(
        default_factory=lambda: dict(DUPLICATE_NGRAM_DEFAULTS)
    )
    disabled: tuple = ()

    def __post_init__(self):
        for name in (
            "max_symbol_to_word_ratio",
            "max_ellipsis_line_fraction",
            "max_bullet_line_fraction",
            "min_alpha_word_fraction",
            "max_duplicate_line_fraction",
            "max_duplicate_line_char_fraction",
            "max_duplicate_paragraph_fraction",
            "max_duplicate_paragraph_char_fraction",
        ):
            _check_fraction(name, getattr(self, name))
        for name in ("min_words", "max_words", "min_stop_words"):
            value = getattr(self, name)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int)
            ):
                raise UserError(
                    f"CleanConfig.{name} must be an integer or None, "
                    f"got {value!r}"
                )
            if value is not None and value < 0:
                raise UserError(
                    f"CleanConfig.{name} must be >= 0, got {value!r}"
                )
        for low, high in (
            ("min_words", "max_words"),
            ("min_mean_word_length", "max_mean_word_length"),
        ):
            a, b = getattr(self, low), getattr(self, high)
            if a is not None and b is not None and a > b:
                raise UserError(
                    f"CleanConfig.{low} ({a}) is above {high} ({b})"
                )
        for name in (
            "max_top_ngram_char_fraction",
            "max_duplicate_ngram_char_fraction",
        ):
            table = getattr(self, name) or {}
            for n, fraction in table.items():
                if isinstance(n, bool) or not isinstance(n, int) or n < 1:
                    raise UserError(
                        f"CleanConfig.{name} keys are n-gram sizes >= 1, "
                        f"got {n!r}"
                    )
                _check_fraction(f"{name}[{n}]", fraction)
        if isinstance(self.disabled, str):
            self.disabled = (self.disabled,)
        unknown = sorted(set(self.disabled) - set(self.rules()))
        if unknown:
            raise UserError(
                f"CleanConfig.disabled names unknown rules {unknown}; "
                f"known: {', '.join(self.rules())}"
            )

    def rules(self):
        """All rule reasons of this configuration, in check order."""
        top = [f"top_{n}gram" for n in self.max_top_ngram_char_fraction or {}]
        dup = [
            f"duplicate_{n}gram"
            for n in self.max_duplicate_ngram_char_fraction or {}
        ]
        return BASE_RULES + tuple(top) + tuple(dup)


def _check_fraction(name, value):
    if value is None:
        return
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not 0 <= value <= 1
    ):
        raise UserError(
            f"CleanConfig.{name} must be a fraction in [0, 1] or None, "
            f"got {value!r}"
        )


# --------------------------------------------------------------------------
# normalize_text


def _char_class(codepoints):
    ranges = []
    for cp in sorted(codepoints):
        if ranges and cp == ranges[-1][1] + 1:
            ranges[-1][1] = cp
        else:
            ranges.append([cp, cp])
    parts = []
    for low, high in ranges:
        parts.append(
            re.escape(chr(low))
            if low == high
            else f"{re.escape(chr(low))}-{re.escape(chr(high))}"
        )
    return re.compile("[" + "".join(parts) + "]")


# Characters that ftfy's ligature, width and control-character fixers act
# on: when a line holds none of them, turning the fixer off changes nothing.
_LIGATURE_CHARS = _char_class(chardata.LIGATURES)
_WIDTH_CHARS = _char_class(chardata.WIDTH_MAP)
_FTFY_CONTROL_CHARS = _char_class(chardata.CONTROL_CHARS)
_FTFY_CONFIGS = {
    (lig, width, control): ftfy.TextFixerConfig(
        fix_latin_ligatures=lig,
        fix_character_width=width,
        remove_control_chars=control,
        explain=False,
    )
    for lig in (False, True)
    for width in (False, True)
    for control in (False, True)
}
_LINE_BREAKS = re.compile(r"\r\n?|[\u2028\u2029\x85]")
_CONTROLS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_SPACES = re.compile(r"[^\S\n]+")
_SPACE_AROUND_NEWLINE = re.compile(r" ?\n ?")
_MANY_NEWLINES = re.compile(r"\n{3,}")


def _fix_line(line):
    if line.isascii() and "&" not in line and "\x1b" not in line:
        return line  # ftfy has nothing to do here but remove controls
    config = _FTFY_CONFIGS[
        (
            _LIGATURE_CHARS.search(line) is not None,
            _WIDTH_CHARS.search(line) is not None,
            _FTFY_CONTROL_CHARS.search(line) is not None,
        )
    ]
    return ftfy.fix_text(line, config)


def normalize_text(text):
    """Repairs and normalises text: the first step of `clean`.

    `ftfy.fix_text` (mojibake, HTML entities, curly quotes, ligatures,
    fullwidth forms), NFC normalisation, line breaks to `\\n`, control
    characters removed (tabs and newlines kept), runs of spaces and tabs to
    one space, spaces around line ends removed, three or more newlines to
    two, and the result stripped.

    Args:
        text: a string.

    Returns:
        The normalised string (possibly empty).

    Example:

    ```python
    from keras_llm.data.clean import normalize_text

    print(normalize_text("  caf\\u00c3\\u00a9\\x00  au   lait\\n\\n\\n\\nok "))
    # café au lait\\n\\nok
    ```
    """
    if not text:
        return ""
    text = _LINE_BREAKS.sub("\n", text)
    if not (text.isascii() and "&" not in text and "\x1b" not in text):
        text = "".join(map(_fix_line, text.splitlines(keepends=True)))
        if not text.isascii():
            text = unicodedata.normalize("NFC", text)
    text = _CONTROLS.sub("", text)
    text = _SPACES.sub(" ", text)
    text = _SPACE_AROUND_NEWLINE.sub("\n", text)
    text = _MANY_NEWLINES.sub("\n\n", text)
    return text.strip()


# --------------------------------------------------------------------------
# quality rules

# A letter: a word character that is neither a digit nor the underscore.
_LETTER = re.compile(r"[^\W\d_]")
_WORD = re.compile(r"\S+")
_PARAGRAPH_BREAK = re.compile(r"\n[^\S\n]*\n\s*")
_MULTIPLIER = np.uint64(0x9E3779B97F4A7C15)
_stop_word_patterns = {}


def _stop_word_pattern(stop_words):
    pattern = _stop_word_patterns.get(stop_words)
    if pattern is None:
        words = "|".join(re.escape(w) for w in stop_words)
        pattern = re.compile(rf"\b(?:{words})\b", re.IGNORECASE)
        _stop_word_patterns[stop_words] = pattern
    return pattern


def _duplicates(parts):
    """(repeated parts, characters in repeated parts), first not counted."""
    counts = collections.Counter(parts)
    repeated = 0
    chars = 0
    for part, count in counts.items():
        if count > 1:
            repeated += count - 1
            chars += (count - 1) * len(part)
    return repeated, chars


def _ngram_rules(words, config, fail):
    """The top n-gram and duplicate n-gram rules, vectorised with numpy.

    An n-gram can only occur twice where both of its (n-1)-grams do, so
    each size looks only at those positions: in natural text few remain
    after n = 3, which keeps this linear in the number of words.
    """
    top = config.max_top_ngram_char_fraction or {}
    dup = config.max_duplicate_ngram_char_fraction or {}
    wanted = {
        n: (f"top_{n}gram", fraction)
        for n, fraction in top.items()
        if fraction is not None and f"top_{n}gram" not in config.disabled
    }
    wanted_dup = {
        n: (f"duplicate_{n}gram", fraction)
        for n, fraction in dup.items()
        if fraction is not None and f"duplicate_{n}gram" not in config.disabled
    }
    n_words = len(words)
    sizes = [n for n in set(wanted) | set(wanted_dup) if n <= n_words]
    if not sizes:
        return
    lookup = {word: i for i, word in enumerate(dict.fromkeys(words))}
    if len(lookup) == n_words:
        return  # no word repeats, so no n-gram does
    ids = np.fromiter(
        map(lookup.__getitem__, words), dtype=np.uint64, count=n_words
    )
    lengths = np.fromiter(map(len, words), dtype=np.int64, count=n_words)
    cumulative = np.concatenate([[0], np.cumsum(lengths)])
    total = cumulative[-1]
    repeated = np.bincount(ids.astype(np.int64))[ids] > 1
    hashes = ids
    for n in range(2, max(sizes) + 1):
        hashes = hashes[:-1] * _MULTIPLIER + ids[n - 1 :]
        where = np.flatnonzero(repeated[:-1] & repeated[1:])
        repeated = np.zeros(len(hashes), dtype=bool)
        if len(where) < 2:
            return  # nothing repeats at this size, nor above
        _, first, inverse, counts = np.unique(
            hashes[where],
            return_index=True,
            return_inverse=True,
            return_counts=True,
        )
        inverse = inverse.reshape(-1)
        occurrences = counts[inverse]
        repeated[where] = occurrences > 1
        if n in wanted:
            reason, limit = wanted[n]
            best = counts.max()
            if best > 1:
                chars = cumulative[where + n] - cumulative[where]
                top_chars = chars[occurrences == best].max()
                if best * top_chars / total > limit:
                    fail(reason)
        if n in wanted_dup:
            reason, limit = wanted_dup[n]
            later = first[inverse] != np.arange(len(where))
            if later.any():
                # the words of each later occurrence, overlaps once
                starts = np.zeros(n_words + 1, dtype=np.int64)
                begin = where[later]
                np.add.at(starts, begin, 1)
                np.add.at(starts, begin + n, -1)
                covered = np.cumsum(starts[:-1]) > 0
                if lengths[covered].sum() / total > limit:
                    fail(reason)
        if not repeated.any():
            return


def quality_issues(text, config=None):
    """The quality rules a text fails, as reasons (empty: keep it).

    Args:
        text: the document text (normally after `normalize_text`).
        config: a `CleanConfig`; None for the Gopher defaults.

    Returns:
        A list of reasons in rule order (`CleanConfig.rules()`), e.g.
        `["too_few_words", "stop_words"]`.

    Example:

    ```python
    from keras_llm.data.clean import quality_issues

    print(quality_issues("# # # # #"))
    # ['too_few_words', 'mean_word_length', 'symbol_ratio', ...]
    ```
    """
    config = config or CleanConfig()
    disabled = set(config.disabled)
    issues = []

    def on(rule, value):
        return value is not None and rule not in disabled

    fail = issues.append
    if (
        config.max_words is not None
        and "too_many_words" not in disabled
        and len(text) > 20 * config.max_words
    ):
        # Count without building a list of words: a giant page stops here.
        n_words = 0
        for _ in _WORD.finditer(text):
            n_words += 1
            if n_words > config.max_words:
                return ["too_many_words"]
    words = text.split()
    n_words = len(words)
    if on("too_few_words", config.min_words) and n_words < config.min_words:
        fail("too_few_words")
    if on("too_many_words", config.max_words) and n_words > config.max_words:
        fail("too_many_words")
        return issues
    if n_words == 0:
        return issues
    if "mean_word_length" not in disabled:
        mean = sum(map(len, words)) / n_words
        low, high = config.min_mean_word_length, config.max_mean_word_length
        if (low is not None and mean < low) or (
            high is not None and mean > high
        ):
            fail("mean_word_length")
    if on("symbol_ratio", config.max_symbol_to_word_ratio):
        ellipses = sum(text.count(e) for e in ELLIPSES)
        if max(text.count("#"), ellipses) / n_words > (
            config.max_symbol_to_word_ratio
        ):
            fail("symbol_ratio")
    lines = [line.strip() for line in text.split("\n")]
    lines = [line for line in lines if line]
    if lines and on("ellipsis_lines", config.max_ellipsis_line_fraction):
        ending = sum(1 for line in lines if line.endswith(ELLIPSES))
        if ending / len(lines) > config.max_ellipsis_line_fraction:
            fail("ellipsis_lines")
    if lines and on("bullet_lines", config.max_bullet_line_fraction):
        bullets = sum(1 for line in lines if line.startswith(BULLETS))
        if bullets / len(lines) > config.max_bullet_line_fraction:
            fail("bullet_lines")
    if on("alpha_words", config.min_alpha_word_fraction):
        no_letter = sum(
            1
            for word in itertools.filterfalse(str.isalpha, words)
            if not _LETTER.search(word)
        )
        if (n_words - no_letter) / n_words < config.min_alpha_word_fraction:
            fail("alpha_words")
    if (
        on("stop_words", config.min_stop_words)
        and not config.language_agnostic
        and config.min_stop_words > 0
    ):
        found = 0
        pattern = _stop_word_pattern(tuple(config.stop_words))
        for _ in pattern.finditer(text):
            found += 1
            if found >= config.min_stop_words:
                break
        if found < config.min_stop_words:
            fail("stop_words")
    total_chars = len(text)
    if lines:
        repeated, chars = _duplicates(lines)
        if (
            on("duplicate_lines", config.max_duplicate_line_fraction)
            and repeated / len(lines) > config.max_duplicate_line_fraction
        ):
            fail("duplicate_lines")
        if (
            on("duplicate_line_chars", config.max_duplicate_line_char_fraction)
            and chars / total_chars > config.max_duplicate_line_char_fraction
        ):
            fail("duplicate_line_chars")
    paragraphs = [p.strip() for p in _PARAGRAPH_BREAK.split(text)]
    paragraphs = [p for p in paragraphs if p]
    if paragraphs:
        repeated, chars = _duplicates(paragraphs)
        limit = config.max_duplicate_paragraph_fraction
        if (
            on("duplicate_paragraphs", limit)
            and repeated / len(paragraphs) > limit
        ):
            fail("duplicate_paragraphs")
        limit = config.max_duplicate_paragraph_char_fraction
        if (
            on("duplicate_paragraph_chars", limit)
            and chars / total_chars > limit
        ):
            fail("duplicate_paragraph_chars")
    _ngram_rules(words, config, fail)
    order = {rule: i for i, rule in enumerate(config.rules())}
    issues.sort(key=order.__getitem__)
    return issues


def _nbytes(text):
    return len(text) if text.isascii() else len(text.encode("utf-8"))


def clean(documents, report=None, *, config=None):
    """Normalises documents and drops those failing the quality rules.

    Streams: one document in memory at a time. Each document is normalised
    with `normalize_text`; an empty result is dropped as "empty", a
    document failing rules is dropped under its first failed reason (in
    `CleanConfig.rules()` order), so that in = kept + dropped. Every failed
    rule is also counted in `report.rule_failures` (a `Counter`, set on the
    report), since a document often fails several.

    Args:
        documents: an iterable of `Document`s (plain text).
        report: a `StageReport` to count into; None for a private one.
        config: a `CleanConfig`; None for the Gopher defaults.

    Returns:
        An iterator of the kept `Document`s, with normalised text.

    Example:

    ```python
    from keras_llm.data.clean import CleanConfig
    from keras_llm.data.clean import clean
    from keras_llm.data.documents import Document
    from keras_llm.data.documents import StageReport

    report = StageReport("clean")
    docs = [Document("", "a.txt"), Document("short text", "b.txt")]
    config = CleanConfig(min_words=1, language_agnostic=True)
    kept = list(clean(docs, report, config=config))
    print(report.summary())  # clean: 2 in, 1 kept, 1 dropped (empty: 1)
    ```
    """
    report = report if report is not None else StageReport("clean")
    if not hasattr(report, "rule_failures"):
        report.rule_failures = collections.Counter()
    config = config or CleanConfig()
    for document in documents:
        report.seen(_nbytes(document.text))
        text = normalize_text(document.text)
        if not text:
            report.drop("empty", document.source)
            report.rule_failures["empty"] += 1
            continue
        issues = quality_issues(text, config)
        if issues:
            report.rule_failures.update(issues)
            report.drop(issues[0], document.source)
            continue
        report.kept(_nbytes(text))
        yield dataclasses.replace(document, text=text)
