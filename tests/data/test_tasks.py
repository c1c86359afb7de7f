import json
import random

import keras_hub
import numpy as np
import pytest
import tensorflow as tf

from keras_llm.data import learn_tokenizer
from keras_llm.data.tasks import ENTAILMENT_LABELS
from keras_llm.data.tasks import SPECIAL_TOKENS
from keras_llm.data.tasks import QAExample
from keras_llm.data.tasks import ReadReport
from keras_llm.data.tasks import TaskDataError
from keras_llm.data.tasks import classification_dataset
from keras_llm.data.tasks import decode_answers
from keras_llm.data.tasks import normalize_answer
from keras_llm.data.tasks import pair_dataset
from keras_llm.data.tasks import read_entailment
from keras_llm.data.tasks import read_sentiment
from keras_llm.data.tasks import read_squad
from keras_llm.data.tasks import squad_dataset
from keras_llm.data.tasks import squad_features
from keras_llm.data.tasks import squad_metrics
from keras_llm.data.tasks import tokenize_with_offsets

WORDS = (
    "the a cat dog sat on mat log river bank philosophers dramatically "
    "walked under bridge morning evening quietly unbelievable kingdom "
    "Paris London castle garden merchant sailed across northern islands "
    "remarkable painter museum questions answered carefully"
).split()


def _sentences(count, seed):
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        words = [rng.choice(WORDS) for _ in range(rng.randint(4, 9))]
        words[0] = words[0].capitalize()
        out.append(" ".join(words) + rng.choice([".", "!", "?", ","]))
    return out


@pytest.fixture(scope="module")
def tokenizer():
    """A lowercasing WordPiece tokenizer with BERT's special tokens, whole
    words, subword pieces, and no "q", "x" or "z" (those words are oov)."""
    letters = [c for c in "abcdefghijklmnoprstuvwy"]
    words = "the cat dog sat on mat log river bank walked under bridge"
    pieces = (
        "paris london philo ##soph ##ers un ##believ ##able dram ##atic "
        "##ally morn ##ing even quiet ##ly ##ed"
    )
    vocab = (
        list(SPECIAL_TOKENS)
        + list(".,!?()")
        + letters
        + ["##" + c for c in letters]
        + words.split()
        + pieces.split()
    )
    return keras_hub.tokenizers.WordPieceTokenizer(
        vocabulary=vocab, lowercase=True, strip_accents=True
    )


def _tf_ids(tokenizer, texts):
    """keras-hub's ids through its tf.data (TensorFlow) path."""
    ds = tf.data.Dataset.from_tensor_slices(texts).batch(len(texts))
    return next(iter(ds.map(tokenizer))).to_list()


def _skipped(report):
    return [(line, r.split(":", 1)[0]) for line, r in report.skipped]


# --- offsets ----------------------------------------------------------------


def test_offsets_give_keras_hub_ids_and_exact_spans(tokenizer):
    texts = _sentences(20, seed=1) + [
        "Unbelievable!!Philosophers,(walked)  under\tthe\nBRIDGE",
        "Café naïve RÉSUMÉ Straße ﬁne İstanbul 東京 — “quoted”",
        "x" * 120 + " zzqqj cat",
    ]
    for tok in (
        tokenizer,
        keras_hub.tokenizers.WordPieceTokenizer(
            vocabulary=tokenizer.get_vocabulary()
        ),
    ):
        expected = _tf_ids(tok, texts)
        vocab = tok.get_vocabulary()
        for text, want in zip(texts, expected):
            ids, starts, ends = tokenize_with_offsets(tok, text)
            assert ids.tolist() == want, text
            assert np.all(starts < ends) and np.all(np.diff(starts) >= 0)
            if not text.isascii():
                continue
            for i, s, e in zip(ids, starts, ends):
                piece = vocab[i]
                if piece == "[UNK]":
                    # The oov token covers one whole word.
                    assert text[s:e] in ("x" * 120, "zzqqj") or (
                        " " not in text[s:e]
                    )
                    continue
                piece = piece.removeprefix("##")
                got = text[s:e].lower() if tok.lowercase else text[s:e]
                assert got == piece, (text, s, e, piece)


def test_offsets_map_accented_and_folded_characters(tokenizer):
    text = "Café İstanbul"
    ids, starts, ends = tokenize_with_offsets(tokenizer, text)
    # Every character is covered, in order, by the token spans.
    covered = sorted({c for s, e in zip(starts, ends) for c in range(s, e)})
    assert covered == [i for i, c in enumerate(text) if c != " "]
    assert text[starts[0] : ends[-1]] == text


# --- readers ----------------------------------------------------------------


def test_read_sentiment_csv_reports_each_bad_row(tmp_path):
    path = tmp_path / "train.csv"
    path.write_text(
        "id,text,label\n"  # 1
        "1,great fun,pos\n"  # 2
        "2,dull, slow,neg\n"  # 3 wrong column count
        "3,,pos\n"  # 4 empty text
        '4,"spans\ntwo lines",neg\n'  # 5-6 kept
        "\n"  # 7 blank
        "5,so so,meh\n"  # 8 unknown label
        "6,   ,neg\n"  # 9 empty text
        "7,no label,\n"  # 10 missing label
        "8,lovely,pos\n",  # 11
        encoding="utf-8",
    )
    data, report = read_sentiment(path, labels=["neg", "pos"])
    assert data.texts == ["great fun", "spans\ntwo lines", "lovely"]
    assert data.label_ids.tolist() == [1, 0, 1]
    assert data.label_ids.dtype == np.int32
    assert data.lines == [2, 5, 11]
    assert data.labels == ("neg", "pos")
    assert _skipped(report) == [
        (3, "wrong column count"),
        (4, "empty text"),
        (8, "unknown label"),
        (9, "empty text"),
        (10, "missing field"),
    ]
    assert report.read == 8 and report.kept == 3
    assert report.read == report.kept + len(report.skipped)
    assert report.blank_lines == 1
    assert report.counts == {
        "empty text": 2,
        "wrong column count": 1,
        "unknown label": 1,
        "missing field": 1,
    }
    assert "'meh'" in dict(report.skipped)[8]
    text = str(report)
    assert f"{path}:8: unknown label" in text
    assert report.summary().startswith(f"{path}: read 8 rows, kept 3")


def test_read_sentiment_infers_sorted_labels(tmp_path):
    path = tmp_path / "train.csv"
    path.write_text("text,label\na,pos\nb,neg\nc,mixed\nd,pos\n")
    data, report = read_sentiment(path)
    assert data.labels == ("mixed", "neg", "pos")
    assert data.label_ids.tolist() == [2, 1, 0, 2]
    assert report.skipped == [] and report.kept == 4


def test_read_sentiment_jsonl(tmp_path):
    path = tmp_path / "train.jsonl"
    lines = [
        json.dumps({"review": "good", "stars": 1}),  # 1
        "{not json",  # 2
        json.dumps(["a", "list"]),  # 3
        json.dumps({"review": "no label"}),  # 4
        json.dumps({"review": None, "stars": 0}),  # 5
        json.dumps({"review": 7, "stars": 0}),  # 6
        "",  # 7 blank
        json.dumps({"review": "bad", "stars": 0}),  # 8
    ]
    path.write_text("\n".join(lines) + "\n")
    data, report = read_sentiment(
        path, text_column="review", label_column="stars"
    )
    assert data.texts == ["good", "bad"] and data.lines == [1, 8]
    assert data.labels == ("0", "1") and data.label_ids.tolist() == [1, 0]
    assert _skipped(report) == [
        (2, "bad JSON"),
        (3, "not a JSON object"),
        (4, "missing field"),
        (5, "missing field"),
        (6, "not text"),
    ]
    assert report.read == 7 == report.kept + len(report.skipped)


def test_read_entailment_jsonl_and_csv(tmp_path):
    rows = [
        {
            "premise": "A man sleeps.",
            "hypothesis": "A man rests.",
            "label": "entailment",
        },
        {"premise": "A dog.", "hypothesis": "A cat.", "label": "-"},
        {"premise": "A dog.", "label": "neutral"},
        {"premise": "Rain.", "hypothesis": "Sun.", "label": "contradiction"},
        {"premise": "Two.", "hypothesis": "", "label": "neutral"},
        {"premise": "Red.", "hypothesis": "A colour.", "label": "neutral"},
    ]
    path = tmp_path / "dev.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    data, report = read_entailment(path)
    assert data.labels == ENTAILMENT_LABELS
    assert data.premises == ["A man sleeps.", "Rain.", "Red."]
    assert data.hypotheses == ["A man rests.", "Sun.", "A colour."]
    assert data.label_ids.tolist() == [0, 2, 1]
    assert _skipped(report) == [
        (2, "unknown label"),
        (3, "missing field"),
        (5, "empty text"),
    ]
    assert "'hypothesis'" in report.skipped[1][1]

    csv_path = tmp_path / "dev.csv"
    csv_path.write_text(
        "premise,hypothesis,label\n"
        "A man sleeps.,A man rests.,0\n"
        "A dog.,A cat.,3\n"
        "Rain.,Sun.,2\n"
    )
    data, report = read_entailment(csv_path, labels=("0", "1", "2"))
    assert data.label_ids.tolist() == [0, 2]
    assert _skipped(report) == [(3, "unknown label")]


def test_whole_file_errors_name_the_file(tmp_path):
    missing = tmp_path / "nope.csv"
    with pytest.raises(TaskDataError, match="nope.csv does not exist"):
        read_sentiment(missing)
    headerless = tmp_path / "raw.csv"
    headerless.write_text("great fun,pos\ndull,neg\n")
    with pytest.raises(TaskDataError, match=r"raw\.csv has no column 'text'"):
        read_sentiment(headerless)
    all_bad = tmp_path / "bad.csv"
    all_bad.write_text("text,label\nx,maybe\n,pos\n")
    with pytest.raises(TaskDataError, match=r"bad\.csv has no valid .*line 2"):
        read_sentiment(all_bad, labels=["neg", "pos"])
    latin = tmp_path / "latin.csv"
    latin.write_bytes("text,label\ncaf\xe9,pos\n".encode("latin-1"))
    with pytest.raises(TaskDataError, match=r"latin\.csv is not UTF-8"):
        read_sentiment(latin)
    not_json = tmp_path / "squad.json"
    not_json.write_text("{'data': }")
    with pytest.raises(TaskDataError, match=r"squad\.json is not JSON"):
        read_squad(not_json)
    not_squad = tmp_path / "other.json"
    not_squad.write_text(json.dumps({"version": "1.1", "articles": []}))
    with pytest.raises(TaskDataError, match=r"other\.json is not a SQuAD"):
        read_squad(not_squad)
    no_questions = tmp_path / "empty.json"
    no_questions.write_text(json.dumps({"data": []}))
    with pytest.raises(TaskDataError, match=r"empty\.json has no questions"):
        read_squad(no_questions)


def _qa(qid, question, answers):
    return {
        "id": qid,
        "question": question,
        "answers": [{"text": t, "answer_start": s} for t, s in answers],
    }


def test_read_squad_reports_bad_questions_by_json_path(tmp_path):
    context = "Paris is the capital of France."
    bad_answer_start = _qa("q8", "Where?", [])
    bad_answer_start["answers"] = [{"text": "Paris", "answer_start": "0"}]
    squad = {
        "version": "1.1",
        "data": [
            {
                "title": "A",
                "paragraphs": [
                    {
                        "context": context,
                        "qas": [
                            _qa(
                                "q1",
                                "What is the capital?",
                                [("Paris", 0), ("Paris", 0)],
                            ),
                            _qa("q2", "Which country?", [("France", 40)]),
                            _qa("q3", "Which country?", [("Spain", 24)]),
                            _qa("q4", "", [("France", 24)]),
                            _qa("q5", "Anything?", []),
                            _qa("q1", "Again?", [("Paris", 0)]),
                            _qa("q6", "Which country?", [("France", 24)]),
                            bad_answer_start,
                        ],
                    },
                    {"qas": [_qa("q7", "Where?", [("x", 0)])]},
                ],
            },
            {"title": "no paragraphs"},
        ],
    }
    path = tmp_path / "dev.json"
    path.write_text(json.dumps(squad))
    examples, report = read_squad(path)
    assert [e.id for e in examples] == ["q1", "q6"]
    assert examples[0].answers == ("Paris", "Paris")
    assert examples[1].answer_start == 24 and examples[1].answer_end == 30
    assert examples[1].context[24:30] == "France"
    p = "data[0].paragraphs[0].qas"
    assert _skipped(report) == [
        (f"{p}[1] (id q2)", "answer outside context"),
        (f"{p}[2] (id q3)", "answer mismatch"),
        (f"{p}[3] (id q4)", "empty text"),
        (f"{p}[4] (id q5)", "no answers"),
        (f"{p}[5] (id q1)", "duplicate id"),
        (f"{p}[7] (id q8)", "bad answer_start"),
        ("data[0].paragraphs[1].qas[0] (id q7)", "missing field"),
        ("data[1]", "missing field"),
    ]
    assert "'Spain'" in report.skipped[1][1]
    assert report.read == 10 == report.kept + len(report.skipped)


def test_report_renders_with_rich():
    import rich.console

    report = ReadReport("f.csv", read=2, kept=1)
    report.skip(7, "unknown label: 'x'")
    console = rich.console.Console(record=True, width=200)
    console.print(report)
    out = console.export_text()
    assert "f.csv: read 2 rows, kept 1, skipped 1 (unknown label: 1)" in out
    assert "7" in out and "unknown label: 'x'" in out


# --- SQuAD features -----------------------------------------------------------


def _squad_file(tmp_path, count=12, seed=3):
    """Long contexts with multi-word answers at chosen word positions."""
    rng = random.Random(seed)
    paragraphs = []
    for n in range(count):
        context = " ".join(_sentences(10, seed=100 + n))
        words = [(m.start(), m.end()) for m in _word_spans(context)]
        first = rng.randrange(len(words) - 3)
        last = first + rng.randint(0, 2)
        start, end = words[first][0], words[last][1]
        answer = context[start:end]
        question = " ".join(rng.sample(WORDS, 3)) + "?"
        qas = [_qa(f"q{n}", question, [(answer, start)])]
        paragraphs.append({"context": context, "qas": qas})
    path = tmp_path / "train.json"
    path.write_text(json.dumps({"data": [{"paragraphs": paragraphs}]}))
    return path


def _word_spans(text):
    import re

    return list(re.finditer(r"[A-Za-z]+", text))


def test_answer_spans_decode_to_the_answer_in_every_window(tokenizer, tmp_path):
    examples, report = read_squad(_squad_file(tmp_path))
    assert report.kept == 12
    seq_len, stride = 40, 10
    f = squad_features(examples, tokenizer, seq_len, stride=stride)
    n = len(f["example_id"])
    assert f["token_ids"].shape == (n, seq_len) and n > 2 * len(examples)
    cls_id = tokenizer.token_to_id("[CLS]")
    sep_id = tokenizer.token_to_id("[SEP]")
    questions = [e.question for e in examples]
    question_ids = dict(zip(questions, _tf_ids(tokenizer, questions)))
    labelled_windows = {}
    for w in range(n):
        ex = examples[f["example_index"][w]]
        assert f["example_id"][w] == ex.id
        ids, ctx = f["token_ids"][w], f["context_mask"][w]
        # [CLS] question [SEP] context [SEP] [PAD]...
        q_ids = question_ids[ex.question]
        q_len = len(q_ids)
        assert ids[0] == cls_id and ids[1 : 1 + q_len].tolist() == q_ids
        assert ids[1 + q_len] == sep_id
        first, count = q_len + 2, int(ctx.sum())
        assert ctx[first : first + count].all() and ids[first + count] == sep_id
        assert f["segment_ids"][w].tolist() == [0] * first + [1] * (
            count + 1
        ) + [0] * (seq_len - first - count - 1)
        assert f["padding_mask"][w].sum() == first + count + 1
        s, e = f["start_positions"][w], f["end_positions"][w]
        offsets = f["offsets"][w]
        assert (offsets[~ctx] == -1).all() and (offsets[ctx] >= 0).all()
        window_chars = offsets[first, 0], offsets[first + count - 1, 1]
        holds = (
            window_chars[0] <= ex.answer_start
            and ex.answer_end <= window_chars[1]
        )
        if s == 0:
            assert e == 0 and not holds
            continue
        assert holds and ctx[s] and ctx[e] and s <= e
        decoded = ex.context[offsets[s, 0] : offsets[e, 1]]
        assert decoded == ex.answer_text
        labelled_windows.setdefault(ex.id, []).append(w)
    # Every answer that fits a window (at most `budget - stride + 1` tokens)
    # is labelled somewhere: in the overlap of two windows for some, only
    # after the first window of its context for others.
    answer_ids = _tf_ids(tokenizer, [e.answer_text for e in examples])
    fitting = {
        e.id
        for e, a in zip(examples, answer_ids)
        if len(a) <= seq_len - len(question_ids[e.question]) - 3 - stride + 1
    }
    assert len(fitting) >= 8 and fitting <= set(labelled_windows)
    assert any(len(ws) >= 2 for ws in labelled_windows.values())
    first_window = {}
    for w in range(n):
        first_window.setdefault(f["example_id"][w], w)
    assert any(
        min(ws) > first_window[qid] for qid, ws in labelled_windows.items()
    )


def test_window_labels_at_the_window_edges(tokenizer):
    words = "cat dog sat mat log river bank bridge".split()
    tokens = [words[i % len(words)] for i in range(30)]  # one token each
    context = " ".join(tokens)
    char = [sum(len(t) + 1 for t in tokens[:i]) for i in range(30)]

    def example(qid, first, last):
        start, end = char[first], char[last] + len(tokens[last])
        text = context[start:end]
        return QAExample(qid, "cat?", context, text, start, (text,), (start,))

    # "cat?" is 2 tokens: 16 - 2 - 3 = 11 context tokens per window, window
    # starts 0, 5, 10, 15, 20; context tokens start at position 4.
    examples = [example("a", 9, 10), example("b", 10, 11), example("c", 25, 29)]
    f = squad_features(examples, tokenizer, 16, stride=5)
    assert f["example_id"].tolist() == ["a"] * 5 + ["b"] * 5 + ["c"] * 5
    spans = list(
        zip(f["start_positions"].tolist(), f["end_positions"].tolist())
    )
    assert spans[:5] == [(13, 14), (8, 9), (0, 0), (0, 0), (0, 0)]
    assert spans[5:10] == [(0, 0), (9, 10), (4, 5), (0, 0), (0, 0)]
    assert spans[10:] == [(0, 0), (0, 0), (0, 0), (0, 0), (9, 13)]
    # Token 9 has 1 token of right context in window 0, 4 in window 1.
    assert not f["token_is_max_context"][0, 13]
    assert f["token_is_max_context"][1, 8]


def test_answers_next_to_punctuation_map_exactly(tokenizer):
    context = "Paris,London(bridge)river.Cat"
    examples = [
        QAExample(str(i), "cat?", context, a, context.index(a), (a,), (0,))
        for i, a in enumerate(["London", "bridge", "river.", "(bridge)", "Cat"])
    ]
    f = squad_features(examples, tokenizer, 32)
    for w, ex in enumerate(examples):
        s, e = f["start_positions"][w], f["end_positions"][w]
        start, end = f["offsets"][w, s, 0], f["offsets"][w, e, 1]
        assert context[start:end] == ex.answer_text


def test_windows_follow_the_stride(tokenizer, tmp_path):
    examples, _ = read_squad(_squad_file(tmp_path, count=2))
    stride = 7
    f = squad_features(examples, tokenizer, 32, stride=stride)
    for index, ex in enumerate(examples):
        context_ids = _tf_ids(tokenizer, [ex.context])[0]
        rows = np.nonzero(f["example_index"] == index)[0]
        assert len(rows) > 2
        for k, w in enumerate(rows):
            got = f["token_ids"][w][f["context_mask"][w]].tolist()
            assert got == context_ids[k * stride : k * stride + len(got)]
        assert k * stride + len(got) == len(context_ids)
        # Every context token is "max context" in exactly one window.
        assert f["token_is_max_context"][rows].sum() == len(context_ids)


def test_decode_answers_and_metrics_round_trip(tokenizer, tmp_path):
    examples, _ = read_squad(_squad_file(tmp_path))
    f = squad_features(examples, tokenizer, 40, stride=10)
    n, t = f["token_ids"].shape
    # Logits peaked at the labels: decoding must give back every answer.
    rng = np.random.default_rng(0)
    start_logits = rng.normal(size=(n, t)).astype(np.float32)
    end_logits = rng.normal(size=(n, t)).astype(np.float32)
    rows = np.arange(n)
    start_logits[rows, f["start_positions"]] += 20.0
    end_logits[rows, f["end_positions"]] += 20.0
    answers = decode_answers(f, start_logits, end_logits, max_context=False)
    labelled = set(f["example_id"][f["start_positions"] > 0])
    assert len(labelled) >= 8 and set(answers) == {e.id for e in examples}
    truth = {e.id: e.answer_text for e in examples if e.id in labelled}
    assert {k: answers[k] for k in labelled} == truth
    labelled_examples = [e for e in examples if e.id in labelled]
    metrics = squad_metrics(answers, labelled_examples)
    assert metrics["exact_match"] == 100.0
    # Official v1.1 quirk: an answer that normalises to "" ("the") matches
    # exactly but has F1 0.
    scorable = [
        normalize_answer(e.answer_text) != "" for e in labelled_examples
    ]
    assert metrics["f1"] == pytest.approx(100.0 * np.mean(scorable))
    # BERT's rule: a start counts only in the window where it has the most
    # context, so only answers labelled in such a window come back.
    answers = decode_answers(f, start_logits, end_logits)
    found = {
        f["example_id"][w]
        for w in range(n)
        if f["start_positions"][w]
        and f["token_is_max_context"][w, f["start_positions"][w]]
    }
    assert found and {k: answers[k] for k in found} == {
        e.id: e.answer_text for e in examples if e.id in found
    }
    # Positions: the best-scoring window wins.
    scores = np.where(f["start_positions"] > 0, 1.0, 0.0)
    answers = decode_answers(
        f, f["start_positions"], f["end_positions"], scores
    )
    assert {k: answers[k] for k in labelled} == truth
    assert all(answers[e.id] == "" for e in examples if e.id not in labelled)
    nothing = decode_answers(f, np.zeros(n, int), np.zeros(n, int))
    assert set(nothing.values()) == {""}
    assert squad_metrics(nothing, examples)["f1"] == 0.0


def test_squad_dataset_shapes(tokenizer, tmp_path):
    examples, _ = read_squad(_squad_file(tmp_path, count=3))
    f = squad_features(examples, tokenizer, 32, stride=8)
    ds = squad_dataset(f, batch_size=4, seed=0)
    inputs, (start, end) = next(iter(ds))
    assert set(inputs) == {
        "token_ids",
        "segment_ids",
        "padding_mask",
        "context_mask",
    }
    assert inputs["token_ids"].shape == (4, 32)
    assert inputs["token_ids"].dtype == tf.int32
    assert inputs["padding_mask"].dtype == tf.bool
    assert start.shape == (4,) and end.dtype == tf.int32
    windows = sum(1 for _ in ds.unbatch())
    assert windows == len(f["example_id"])


def test_squad_features_rejects_bad_input(tokenizer):
    ex = QAExample("q", "one two three", "cat", "cat", 0, ("cat",), (0,))
    with pytest.raises(ValueError, match="leaves no room"):
        squad_features([ex], tokenizer, 5)
    with pytest.raises(TypeError, match="WordPieceTokenizer"):
        squad_features([ex], object(), 32)


# --- metrics ----------------------------------------------------------------


def test_normalization_and_metrics_on_known_pairs():
    assert normalize_answer("The  Cat's, hat!") == "cats hat"
    ex = QAExample("1", "?", "the cat sat", "the cat", 0, ("the Cat",), (0,))
    m = squad_metrics({"1": "cat"}, [ex])
    assert m["exact_match"] == 100.0 and m["f1"] == 100.0
    # "the cat sat on the mat" -> cat sat on mat; "a cat on a mat" -> cat
    # on mat: 3 shared, precision 3/4, recall 3/3, F1 = 6/7.
    ex2 = QAExample("2", "?", "x", "x", 0, ("a cat on a mat",), (0,))
    m = squad_metrics({"2": "the cat sat on the mat"}, [ex2])
    assert m["exact_match"] == 0.0
    assert m["f1"] == pytest.approx(100.0 * 6 / 7)
    # Best over several references, a missing prediction scores 0.
    ex3 = QAExample("3", "?", "x", "x", 0, ("dog", "a dog house"), (0, 0))
    m = squad_metrics({"2": "the cat sat on the mat", "3": "house"}, [ex2, ex3])
    assert m["f1"] == pytest.approx((6 / 7 + 2 * 0.5 / 1.5) / 2 * 100)
    m = squad_metrics({}, [ex, ex2])
    assert m["missing"] == 2 and m["f1"] == 0.0
    # As the official v1.1 script: "The" vs "a" is an exact match (both
    # normalise to "") with F1 0.
    ex4 = QAExample("4", "?", "x", "x", 0, ("a",), (0,))
    m = squad_metrics({"4": "The"}, [ex4])
    assert m["exact_match"] == 100.0 and m["f1"] == 0.0


# --- classification pipelines --------------------------------------------------


def test_classification_dataset_packs_cls_text_sep(tokenizer):
    texts = _sentences(10, seed=5)
    labels = list(range(10))
    ds = classification_dataset(
        texts, labels, tokenizer, 12, batch_size=4, shuffle=False
    )
    spec_x, spec_y = ds.element_spec
    assert spec_x["token_ids"].shape.as_list() == [None, 12]
    assert spec_x["segment_ids"].dtype == tf.int32
    assert spec_x["padding_mask"].dtype == tf.bool
    assert spec_y.dtype == tf.int32
    batches = list(ds)
    assert [len(y) for _, y in batches] == [4, 4, 2]
    x, y = batches[0]
    packer = keras_hub.layers.MultiSegmentPacker(
        12,
        start_value=tokenizer.token_to_id("[CLS]"),
        end_value=tokenizer.token_to_id("[SEP]"),
        pad_value=tokenizer.token_to_id("[PAD]"),
    )
    want, _ = packer(_tf_ids(tokenizer, texts[:4]))
    np.testing.assert_array_equal(x["token_ids"].numpy(), want)
    np.testing.assert_array_equal(
        x["padding_mask"].numpy(), np.asarray(want) != 0
    )
    assert not x["segment_ids"].numpy().any()
    assert y.numpy().tolist() == [0, 1, 2, 3]
    # Seeded shuffling is reproducible and drop_remainder gives full batches.
    a = classification_dataset(texts, labels, tokenizer, 12, 4, seed=1)
    b = classification_dataset(texts, labels, tokenizer, 12, 4, seed=1)
    assert [y.numpy().tolist() for _, y in a] == [
        y.numpy().tolist() for _, y in b
    ]
    d = classification_dataset(
        texts, labels, tokenizer, 12, 4, drop_remainder=True
    )
    assert d.element_spec[0]["token_ids"].shape.as_list() == [4, 12]


def test_pair_dataset_segments(tokenizer):
    ds = pair_dataset(
        ["The cat sat.", "Paris"],
        ["A dog walked under the bridge.", "London"],
        [0, 2],
        tokenizer,
        16,
        batch_size=2,
        shuffle=False,
    )
    x, y = next(iter(ds))
    ids, seg = x["token_ids"].numpy(), x["segment_ids"].numpy()
    sep = tokenizer.token_to_id("[SEP]")
    for row in range(2):
        seps = np.nonzero(ids[row] == sep)[0]
        assert len(seps) == 2
        assert not seg[row, : seps[0] + 1].any()
        assert seg[row, seps[0] + 1 : seps[1] + 1].all()
        assert x["padding_mask"].numpy()[row].sum() == seps[1] + 1
    assert y.numpy().tolist() == [0, 2]
    with pytest.raises(ValueError, match="2 texts but 3 labels"):
        pair_dataset(["a", "b"], ["c", "d"], [0, 1, 2], tokenizer, 8, 2)


def test_tokenizer_without_cls_is_rejected():
    tok = learn_tokenizer(_sentences(50, seed=2), "wordpiece", 60)
    with pytest.raises(ValueError, match=r"no \[CLS\] token"):
        classification_dataset(["a"], [0], tok, 8, 1)
