"""Tests of keras_llm.data.clean: normalisation and the Gopher rules."""

import itertools
import random

import ftfy
import pytest

from keras_llm.data.clean import CleanConfig
from keras_llm.data.clean import clean
from keras_llm.data.clean import normalize_text
from keras_llm.data.clean import quality_issues
from keras_llm.data.documents import Document
from keras_llm.data.documents import StageReport
from keras_llm.errors import UserError

GOOD = (
    "The old harbor town wakes slowly in winter. Fishermen check their "
    "nets while bakers open shutters and the smell of fresh bread drifts "
    "along narrow streets. Children walk to school with heavy bags, "
    "talking about football, homework and a strange ship that arrived "
    "last night. Nobody knows where it came from, but the captain seems "
    "friendly and has already bought coffee for half of the market. By "
    "noon, rumors about treasure, storms and distant islands have spread "
    "to every kitchen, and even the mayor wants to meet him."
)


def unique_words(count, seed=0, length=(4, 8)):
    """Distinct lowercase pseudo-words: no repeated n-grams, no stop words."""
    rng = random.Random(seed)
    words = set()
    while len(words) < count:
        n = rng.randint(*length)
        words.add("".join(rng.choice("bcdfgklmnprstvz") for _ in range(n)))
    return sorted(words, key=lambda w: rng.random())


def text_of(words, per_line=None):
    if per_line is None:
        return " ".join(words)
    return "\n".join(
        " ".join(words[i : i + per_line])
        for i in range(0, len(words), per_line)
    )


def base(count=80, seed=0):
    # unique words plus two stop words: passes every rule
    words = unique_words(count, seed)
    words[3], words[10] = "the", "of"
    return words


def test_good_paragraph_passes_everything():
    assert len(GOOD.split()) > 70
    assert quality_issues(GOOD) == []
    assert quality_issues(text_of(base())) == []


REPETITION = ("duplicate_lines", "duplicate_line_chars")
NGRAMS = tuple(f"top_{n}gram" for n in (2, 3, 4)) + tuple(
    f"duplicate_{n}gram" for n in range(5, 11)
)


def case(rule):
    """(text, rules disabled because they measure the same repetition)."""
    w = base()
    if rule == "too_few_words":
        return text_of(w[:30]), ()
    if rule == "too_many_words":
        letters = itertools.product("bcdfgklmnprstvz", repeat=5)
        words = ["the", "of"] + ["".join(x) for x in letters][:100_010]
        return text_of(words), ()
    if rule == "mean_word_length":
        long = unique_words(70, length=(14, 16))
        return text_of(["the", "of"] + long), ()
    if rule == "symbol_ratio":
        tags = [f"#{x}" for x in unique_words(12, seed=5)]
        return text_of(w[:40] + tags + w[40:]), ()
    if rule == "ellipsis_lines":
        lines = text_of(w, per_line=10).split("\n")
        lines = [
            line + " ..." if i % 2 else line for i, line in enumerate(lines)
        ]
        return "\n".join(lines), ()
    if rule == "bullet_lines":
        lines = text_of(w, per_line=8).split("\n")
        return "\n".join("- " + line for line in lines), ()
    if rule == "alpha_words":
        numbers = [str(1000 + 7 * i) for i in range(25)]
        return text_of(w[:50] + numbers + w[50:]), ()
    if rule == "stop_words":
        return text_of(unique_words(80)), ()
    if rule == "duplicate_lines":
        lines = text_of(w, per_line=10).split("\n")
        out = []
        for line in lines:
            out += [line, "ok"]
        return "\n".join(out), ()
    if rule == "duplicate_line_chars":
        lines = text_of(w, per_line=8).split("\n")
        return "\n".join(lines + lines[:3]), NGRAMS
    if rule == "duplicate_paragraphs":
        paras = [text_of(w[i : i + 20], per_line=5) for i in range(0, 80, 20)]
        return "\n\n".join(paras + ["ok"] * 4), ("duplicate_lines",)
    if rule == "duplicate_paragraph_chars":
        paras = [text_of(w[i : i + 10]) for i in range(0, 80, 10)]
        return "\n\n".join(paras + paras[:3]), REPETITION + NGRAMS
    if rule == "top_2gram":
        out = list(w)
        for i in range(25):
            out.insert(3 * i + 1, "new york")
        return text_of(out), ()
    if rule.startswith("top_"):
        n = int(rule[4])
        phrase = " ".join(["new", "york", "city", "hall"][:n])
        out = list(w)
        for i in range(25):
            out.insert(3 * i + 1, phrase)
        return text_of(out), tuple(r for r in NGRAMS if r != rule)
    if rule.startswith("duplicate_") and rule.endswith("gram"):
        n = int(rule[len("duplicate_") : -len("gram")])
        span = w[20:40]
        return text_of(w + span + w[:1]), tuple(r for r in NGRAMS if r != rule)
    raise AssertionError(rule)


ALL_RULES = CleanConfig().rules()


# One test per table rather than one per row: the suite's autouse fixture
# (keras clear_session) costs ~0.7 s per test; failures list every row.


def test_each_rule_fires_alone():
    wrong = []
    for rule in ALL_RULES:
        text, correlated = case(rule)
        config = CleanConfig(disabled=correlated)
        issues = quality_issues(text, config)
        if issues != [rule]:
            wrong.append(f"{rule}: {issues}")
        # disabling the rule keeps the document
        off = CleanConfig(disabled=correlated + (rule,))
        if quality_issues(text, off) != []:
            wrong.append(f"{rule} disabled: {quality_issues(text, off)}")
    assert not wrong, wrong


THRESHOLDS = [
    ("too_few_words", "min_words", 20),
    ("too_many_words", "max_words", 200_000),
    ("mean_word_length", "max_mean_word_length", 20),
    ("symbol_ratio", "max_symbol_to_word_ratio", 0.2),
    ("ellipsis_lines", "max_ellipsis_line_fraction", 0.6),
    ("bullet_lines", "max_bullet_line_fraction", 1.0),
    ("alpha_words", "min_alpha_word_fraction", 0.7),
    ("stop_words", "min_stop_words", 0),
    ("duplicate_lines", "max_duplicate_line_fraction", 0.6),
    ("duplicate_line_chars", "max_duplicate_line_char_fraction", 0.5),
    ("duplicate_paragraphs", "max_duplicate_paragraph_fraction", 0.6),
    (
        "duplicate_paragraph_chars",
        "max_duplicate_paragraph_char_fraction",
        0.5,
    ),
]


def test_threshold_flips_verdict():
    wrong = []
    for rule, field, value in THRESHOLDS:
        text, correlated = case(rule)
        before = quality_issues(text, CleanConfig(disabled=correlated))
        loose = CleanConfig(disabled=correlated, **{field: value})
        off = CleanConfig(disabled=correlated, **{field: None})
        after = quality_issues(text, loose), quality_issues(text, off)
        if before != [rule] or after != ([], []):
            wrong.append(f"{field}: {before} -> {after}")
    assert not wrong, wrong


def test_ngram_thresholds_configurable():
    text, correlated = case("top_2gram")
    loose = CleanConfig(max_top_ngram_char_fraction={2: 0.9, 3: 0.18})
    assert quality_issues(text, loose) == []
    strict = CleanConfig(max_duplicate_ngram_char_fraction={5: 0.0})
    assert quality_issues(GOOD, strict) == []  # nothing repeats in GOOD
    text, correlated = case("duplicate_5gram")
    assert "duplicate_5gram" in quality_issues(text, strict)


def test_language_agnostic_turns_stop_words_off():
    text, _ = case("stop_words")
    assert quality_issues(text, CleanConfig(language_agnostic=True)) == []


def test_config_validation():
    with pytest.raises(UserError, match="max_bullet_line_fraction"):
        CleanConfig(max_bullet_line_fraction=1.5)
    with pytest.raises(UserError, match="unknown rules"):
        CleanConfig(disabled=("no_such_rule",))
    with pytest.raises(UserError, match="min_words"):
        CleanConfig(min_words=10, max_words=5)
    with pytest.raises(UserError, match="n-gram sizes"):
        CleanConfig(max_top_ngram_char_fraction={0: 0.1})


def test_normalize_text_repairs_and_tidies():
    assert normalize_text("caf\u00c3\u00a9") == "café"
    assert normalize_text("AT&amp;T") == "AT&T"
    assert normalize_text("e\u0301t\u00e9") == "\u00e9t\u00e9"  # NFC
    assert normalize_text("a\x00b\x07c\td") == "abc d"
    text = "  one   two\t\tthree  \r\nfour \n\n\n\n\nfive  "
    assert normalize_text(text) == "one two three\nfour\n\nfive"
    assert normalize_text(" \n\t ") == ""


def test_normalize_text_matches_ftfy_line_by_line():
    # the fast paths must give what ftfy gives on the whole text
    rng = random.Random(3)
    pieces = [
        "plain words ",
        "caf\u00c3\u00a9 ",
        "\u201cquoted\u201d ",
        "\ufb01ne ",
        "\uff26\uff55\uff4c\uff4c ",
        "&lt;b&gt; ",
        "<p> ",
        "\u200b",
        "\ufeff",
        "\n",
        "na\u00efve ",
    ]
    for _ in range(200):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(1, 12)))
        fixed = ftfy.fix_text(text)
        assert normalize_text(text) == normalize_text(fixed), text


def test_clean_counts_every_document():
    docs = [
        Document(GOOD, "good.txt"),
        Document("\x00 \n ", "blank.txt"),
        Document("too short to keep", "short.txt"),
        Document("caf\u00c3\u00a9 " + GOOD, "mojibake.txt", url="http://x"),
        Document(case("bullet_lines")[0], "bullets.txt"),
    ]
    report = StageReport("clean")
    kept = list(clean(docs, report))
    report.check()
    assert [d.source for d in kept] == ["good.txt", "mojibake.txt"]
    assert kept[1].text.startswith("café The old harbor")
    assert kept[1].url == "http://x"
    assert report.dropped == {"empty": 1, "too_few_words": 1, "bullet_lines": 1}
    assert report.examples["empty"] == ["blank.txt"]
    # the short text fails several rules; each is counted once
    assert report.rule_failures["too_few_words"] == 1
    assert report.rule_failures["stop_words"] == 1
    assert report.docs_in == 5 and report.kept_count == 2


def test_clean_streams():
    def endless():
        while True:
            yield Document(GOOD, "g")

    stream = clean(endless())
    assert next(stream).text == GOOD
