"""Tests of keras_llm.data.dedup: exact and MinHash-LSH near dedup."""

import random

import numpy as np
import pytest
from datasketch import MinHash

from keras_llm.data.dedup import Deduplicator
from keras_llm.data.dedup import dedup
from keras_llm.data.dedup import shingle_hash
from keras_llm.data.dedup import shingles
from keras_llm.data.documents import Document
from keras_llm.data.documents import StageReport
from keras_llm.errors import UserError

VOCABULARY = (
    "river garden market window teacher winter station letter morning "
    "kitchen village engine forest harbor mountain summer bridge island "
    "doctor season paper music light water story family number table "
    "evening animal city country office money street history stone road "
    "the of and to with that have it is was for on as by at from"
).split()


def document(rng, words=200):
    return " ".join(rng.choice(VOCABULARY) for _ in range(words)) + "."


def edit(text, fraction, rng):
    words = text.split(" ")
    for i in rng.sample(range(len(words)), int(fraction * len(words))):
        words[i] = rng.choice([w for w in VOCABULARY if w != words[i]])
    return " ".join(words)


def test_signature_matches_datasketch_update_batch():
    text = document(random.Random(0))
    reference = MinHash(num_perm=64, seed=7, hashfunc=shingle_hash)
    reference.update_batch(list(shingles(text, 5)))
    ours = Deduplicator(num_perm=64, seed=7).signature(text)
    np.testing.assert_array_equal(ours.hashvalues, reference.hashvalues)
    assert ours.jaccard(ours) == 1.0


def test_shingles():
    assert shingles("Hello, World!", 5) == {
        "hello",
        "ello ",
        "llo w",
        "lo wo",
        "o wor",
        " worl",
        "world",
    }
    assert shingles("Hi!", 5) == {"hi"}
    assert shingles("  ...  ", 5) == set()
    assert shingles("a b c d", 2, unit="word") == {"a b", "b c", "c d"}


def test_exact_copies_and_variants_are_exact_duplicates():
    rng = random.Random(1)
    text = document(rng)
    variants = [
        text,
        text.upper(),
        "  " + text.replace(" ", "   \n") + "  ",
        text.replace(" ", ", "),
    ]
    docs = [Document(t, f"v{i}") for i, t in enumerate(variants)]
    report = StageReport("dedup")
    kept = list(dedup(docs, report))
    report.check()
    assert [d.source for d in kept] == ["v0"]
    assert report.dropped == {"exact_duplicate": 3}


def test_near_duplicates_dropped_and_distant_edits_kept():
    rng = random.Random(2)
    dedup_ = Deduplicator(threshold=0.8)
    misses = 0
    for _ in range(20):
        text = document(rng)
        assert dedup_.check(text) is None
        first = dedup_.kept_count - 1
        near = edit(text, 0.05, rng)
        if dedup_.check(near) != "near_duplicate":
            misses += 1
        else:
            assert dedup_.last_match == first
        assert dedup_.check(edit(text, 0.5, rng)) is None
    assert misses <= 1  # LSH and the MinHash estimate are randomised


def test_first_of_each_cluster_kept_exact_only_and_near_only():
    rng = random.Random(3)
    a, b = document(rng), document(rng)
    docs = [
        Document(a, "a"),
        Document(edit(a, 0.03, rng), "a2"),
        Document(b, "b"),
        Document(a, "a3"),
        Document(edit(b, 0.03, rng), "b2"),
    ]
    assert [d.source for d in dedup(docs)] == ["a", "b"]
    assert [d.source for d in dedup(docs, near=False)] == ["a", "a2", "b", "b2"]
    report = StageReport("dedup")
    kept = [d.source for d in dedup(docs, report, exact=False)]
    assert kept == ["a", "b"]
    assert report.dropped == {"near_duplicate": 3}


def test_planted_pairs_precision_and_recall():
    rng = random.Random(4)
    docs, planted = [], set()
    for i in range(200):
        if i >= 20 and len(planted) < 20 and rng.random() < 0.2:
            source = rng.choice([d for d in docs if d.source[0] == "o"])
            text = edit(source.text, rng.uniform(0.01, 0.05), rng)
            docs.append(Document(text, f"p{i}"))
            planted.add(f"p{i}")
        else:
            docs.append(Document(document(rng, rng.randint(100, 300)), f"o{i}"))
    assert len(planted) == 20
    report = StageReport("dedup")
    kept = {d.source for d in dedup(docs, report)}
    report.check()
    dropped = {d.source for d in docs} - kept
    true_positives = len(dropped & planted)
    assert true_positives / max(len(dropped), 1) >= 0.95  # precision
    assert true_positives / len(planted) >= 0.95  # recall


def test_options_validated():
    for options, message in [
        ({"threshold": 0}, "threshold must be in"),
        ({"threshold": 1.0}, "threshold must be in"),
        ({"threshold": "high"}, "threshold must be a number"),
        ({"shingle_size": 0}, "shingle_size must be an integer >= 1"),
        ({"num_perm": 1}, "num_perm must be >= 2"),
        ({"unit": "byte"}, "unit must be one of"),
    ]:
        with pytest.raises(UserError, match=message):
            Deduplicator(**options)
        with pytest.raises(UserError, match=message):
            dedup([], **options)


def test_empty_texts_and_streaming():
    docs = [Document("", "e1"), Document("", "e2"), Document("x", "x")]
    assert [d.source for d in dedup(docs)] == ["e1", "x"]
    assert [d.source for d in dedup(docs, exact=False)] == ["e1", "e2", "x"]

    def endless():
        rng = random.Random(5)
        while True:
            yield Document(document(rng), "d")

    stream = dedup(endless())
    assert next(stream).source == "d"
