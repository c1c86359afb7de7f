"""Readers for supervised task files: sentiment, entailment and SQuAD.

Each reader returns the examples it kept and a `ReadReport`. A malformed row
(a missing field, empty text, an unknown label, bad JSON on a line, a wrong
column count, an answer outside its context or not matching it) is skipped
and listed in the report with its line and reason, never dropped silently.
A problem with the whole file (missing, not JSON, not a SQuAD layout, a CSV
without the needed header, no valid row at all) raises one `TaskDataError`
naming the file.
"""

import csv
import dataclasses
import json
import os

import numpy as np

from keras_llm.data.tasks import report as rp
from keras_llm.data.tasks.report import ReadReport
from keras_llm.data.tasks.report import TaskDataError

ENTAILMENT_LABELS = ("entailment", "neutral", "contradiction")
JSONL_EXTENSIONS = (".jsonl", ".ndjson", ".json")


@dataclasses.dataclass
class TextClassificationData:
    """Texts with labels, as read by `read_sentiment`.

    Attributes:
        texts: list of strings.
        label_ids: `np.int32` array, an index into `labels` per text.
        labels: tuple of label names (the label vocabulary).
        lines: list of the source line of each text.
    """

    texts: list
    label_ids: np.ndarray
    labels: tuple
    lines: list

    def __len__(self):
        return len(self.texts)


@dataclasses.dataclass
class TextPairData:
    """Premise/hypothesis pairs with labels, as read by `read_entailment`.

    Attributes:
        premises: list of strings.
        hypotheses: list of strings.
        label_ids: `np.int32` array, an index into `labels` per pair.
        labels: tuple of label names (the label vocabulary).
        lines: list of the source line of each pair.
    """

    premises: list
    hypotheses: list
    label_ids: np.ndarray
    labels: tuple
    lines: list

    def __len__(self):
        return len(self.premises)


@dataclasses.dataclass(frozen=True)
class QAExample:
    """One SQuAD question, as read by `read_squad`.

    Attributes:
        id: the question id (string).
        question: the question text.
        context: the paragraph the answer is in.
        answer_text: the first answer's text (the training target).
        answer_start: the first answer's start, a character index into
            `context`.
        answers: tuple of all answer texts (for evaluation).
        answer_starts: tuple of their character starts.
    """

    id: str
    question: str
    context: str
    answer_text: str
    answer_start: int
    answers: tuple
    answer_starts: tuple

    @property
    def answer_end(self):
        """The first answer's end (exclusive character index)."""
        return self.answer_start + len(self.answer_text)


def _check_file(path):
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise TaskDataError(f"task file {path} does not exist")
    return path


def _is_jsonl(path):
    lower = path.lower()
    if lower.endswith(JSONL_EXTENSIONS):
        return True
    if lower.endswith((".csv", ".tsv")):
        return False
    with open(path, encoding="utf-8-sig", errors="replace") as f:
        for line in f:
            if line.strip():
                return line.lstrip().startswith("{")
    return False


def _decode_error(path, e):
    return TaskDataError(
        f"task file {path} is not UTF-8 text ({e.reason} at byte {e.start}); "
        "convert it to UTF-8"
    )


def _jsonl_rows(path, report):
    """Yields `(line, dict)` for each JSON object line; reports bad lines."""
    try:
        with open(path, encoding="utf-8-sig") as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    report.blank_lines += 1
                    continue
                report.read += 1
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    report.skip(
                        number,
                        rp.reason(rp.BAD_JSON, f"{e.msg} at column {e.colno}"),
                    )
                    continue
                if not isinstance(row, dict):
                    report.skip(
                        number,
                        rp.reason(rp.NOT_AN_OBJECT, type(row).__name__),
                    )
                    continue
                yield number, row
    except UnicodeDecodeError as e:
        raise _decode_error(path, e) from e


def _csv_rows(path, report, columns):
    """Yields `(line, dict)` per CSV record; checks header and widths."""
    delimiter = "\t" if path.lower().endswith(".tsv") else ","
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            reader = csv.reader(f, delimiter=delimiter)
            try:
                header = next(reader, None)
                while header == []:
                    report.blank_lines += 1
                    header = next(reader, None)
                missing = [c for c in columns if c not in (header or [])]
                if missing:
                    raise TaskDataError(
                        f"CSV file {path} has no column "
                        f"{', '.join(repr(c) for c in missing)} in its header "
                        f"{header or []}; its first line must name the "
                        f"columns: {','.join(columns)}"
                    )
                previous_end = reader.line_num
                for row in reader:
                    line = previous_end + 1
                    previous_end = reader.line_num
                    if not row:
                        report.blank_lines += 1
                        continue
                    report.read += 1
                    if len(row) != len(header):
                        report.skip(
                            line,
                            rp.reason(
                                rp.WRONG_COLUMN_COUNT,
                                f"{len(row)} fields, the header has "
                                f"{len(header)}",
                            ),
                        )
                        continue
                    yield line, dict(zip(header, row))
            except csv.Error as e:
                raise TaskDataError(
                    f"CSV file {path} is malformed at line {reader.line_num}: "
                    f"{e}"
                ) from e
    except UnicodeDecodeError as e:
        raise _decode_error(path, e) from e


def _rows(path, report, columns):
    if _is_jsonl(path):
        return _jsonl_rows(path, report)
    return _csv_rows(path, report, columns)


def _text_field(row, name):
    """`(value, None)` for non-empty text, else `(None, reason)`."""
    value = row.get(name)
    if value is None:
        return None, rp.reason(rp.MISSING_FIELD, repr(name))
    if not isinstance(value, str):
        return None, rp.reason(
            rp.NOT_TEXT, f"{name!r} is a {type(value).__name__}"
        )
    if not value.strip():
        return None, rp.reason(rp.EMPTY_TEXT, repr(name))
    return value, None


def _label_field(row, name):
    value = row.get(name)
    if value is None or value == "":
        return None, rp.reason(rp.MISSING_FIELD, repr(name))
    if isinstance(value, (dict, list)):
        return None, rp.reason(
            rp.NOT_TEXT, f"{name!r} is a {type(value).__name__}"
        )
    return str(value).strip(), None


def _read_labeled(path, text_columns, label_column, labels, what):
    """Shared reader: returns `(texts_per_column, label_ids, labels, lines,
    report)`."""
    path = _check_file(path)
    report = ReadReport(path)
    candidates = []
    for line, row in _rows(path, report, (*text_columns, label_column)):
        values = []
        problem = None
        for column in text_columns:
            value, problem = _text_field(row, column)
            if problem:
                break
            values.append(value)
        if not problem:
            label, problem = _label_field(row, label_column)
        if problem:
            report.skip(line, problem)
            continue
        candidates.append((line, values, label))

    if labels is None:
        labels = tuple(sorted({label for _, _, label in candidates}))
    else:
        if isinstance(labels, str):
            raise TypeError(
                f"`labels` must be a list of label names, not the string "
                f"{labels!r}."
            )
        labels = tuple(str(label) for label in labels)
        if not labels:
            raise ValueError("`labels` must name at least one label.")
    index = {label: i for i, label in enumerate(labels)}
    columns = [[] for _ in text_columns]
    label_ids, lines = [], []
    for line, values, label in candidates:
        if label not in index:
            report.skip(
                line,
                rp.reason(
                    rp.UNKNOWN_LABEL,
                    f"{label!r} (known: {', '.join(labels)})",
                ),
            )
            continue
        for column, value in zip(columns, values):
            column.append(value)
        label_ids.append(index[label])
        lines.append(line)
    report.kept = len(lines)
    report.skipped.sort(key=lambda item: item[0])
    rp.check_not_empty(report, what)
    return columns, np.asarray(label_ids, np.int32), labels, lines, report


def read_sentiment(path, labels=None, text_column="text", label_column="label"):
    """Reads a text classification file (sentiment, or any labels).

    A CSV (or `.tsv`) file whose header names the text and label columns
    (other columns are ignored), or JSONL (`.jsonl`, `.json`, `.ndjson`) with
    the same keys, one object per line. Malformed rows are skipped and
    listed in the report.

    Args:
        path: the file.
        labels: list of allowed label names, in id order; a row with another
            label is skipped as `unknown label`. `None` takes every label in
            the file, sorted. JSON numbers are read as their text (`1` is
            `"1"`). Defaults to `None`.
        text_column: the text column or key. Defaults to `"text"`.
        label_column: the label column or key. Defaults to `"label"`.

    Returns:
        `(data, report)`: a `TextClassificationData` (`texts`, `label_ids`,
        `labels` the label vocabulary, `lines`) and a `ReadReport`.

    Raises:
        TaskDataError: a missing or undecodable file, a CSV header without
            the columns, or no valid row.

    Example:

    ```python
    import pathlib
    import tempfile

    from keras_llm.data.tasks import read_sentiment

    path = pathlib.Path(tempfile.mkdtemp()) / "train.csv"
    path.write_text("text,label\\ngreat fun,pos\\ndull,neg\\nmeh,\\n")
    data, report = read_sentiment(path)
    print(data.labels, data.label_ids)  # ('neg', 'pos') [1 0]
    print(report)  # ... train.csv:4: missing field: 'label'
    ```
    """
    (texts,), label_ids, labels, lines, report = _read_labeled(
        path, (text_column,), label_column, labels, "labelled texts"
    )
    return TextClassificationData(texts, label_ids, labels, lines), report


def read_entailment(
    path,
    labels=ENTAILMENT_LABELS,
    premise_column="premise",
    hypothesis_column="hypothesis",
    label_column="label",
):
    """Reads a textual entailment (premise, hypothesis, label) file.

    JSONL (`.jsonl`, `.json`, `.ndjson`; one object per line) or CSV/TSV
    with a header. Malformed rows (a missing or empty premise or
    hypothesis, an unknown label such as SNLI's `"-"`) are skipped and
    listed in the report.

    Args:
        path: the file.
        labels: list of allowed label names, in id order, or `None` to take
            every label in the file, sorted. For files with numeric labels
            pass their text, e.g. `("0", "1", "2")`. Defaults to
            `("entailment", "neutral", "contradiction")`.
        premise_column: the premise key. Defaults to `"premise"`.
        hypothesis_column: the hypothesis key. Defaults to `"hypothesis"`.
        label_column: the label key. Defaults to `"label"`.

    Returns:
        `(data, report)`: a `TextPairData` (`premises`, `hypotheses`,
        `label_ids`, `labels`, `lines`) and a `ReadReport`.

    Raises:
        TaskDataError: a missing or undecodable file, a CSV header without
            the columns, or no valid row.

    Example:

    ```python
    import json
    import pathlib
    import tempfile

    from keras_llm.data.tasks import read_entailment

    path = pathlib.Path(tempfile.mkdtemp()) / "dev.jsonl"
    rows = [
        {"premise": "A man sleeps.", "hypothesis": "A man rests.",
         "label": "entailment"},
        {"premise": "A dog.", "hypothesis": "A cat.", "label": "-"},
    ]
    path.write_text("\\n".join(json.dumps(r) for r in rows))
    data, report = read_entailment(path)
    print(data.label_ids, report.counts)  # [0] {'unknown label': 1}
    ```
    """
    (premises, hypotheses), label_ids, labels, lines, report = _read_labeled(
        path,
        (premise_column, hypothesis_column),
        label_column,
        labels,
        "premise/hypothesis pairs",
    )
    data = TextPairData(premises, hypotheses, label_ids, labels, lines)
    return data, report


def _qa_problem(qa, context, where):
    """The reason a SQuAD question is malformed, or `None`."""
    if not isinstance(context, str):
        if context is None:
            return rp.reason(rp.MISSING_FIELD, "'context' of the paragraph")
        return rp.reason(rp.NOT_TEXT, "'context' of the paragraph")
    if not context.strip():
        return rp.reason(rp.EMPTY_TEXT, "'context' of the paragraph")
    qid = qa.get("id")
    if qid is None or qid == "":
        return rp.reason(rp.MISSING_FIELD, "'id'")
    _, problem = _text_field(qa, "question")
    if problem:
        return problem
    answers = qa.get("answers")
    if not isinstance(answers, list) or not answers:
        return rp.reason(
            rp.NO_ANSWERS,
            "'answers' is missing or empty (SQuAD v1.1 needs one)",
        )
    for a, answer in enumerate(answers):
        name = f"answers[{a}]"
        if not isinstance(answer, dict):
            return rp.reason(rp.NOT_AN_OBJECT, name)
        text, problem = _text_field(answer, "text")
        if problem:
            return f"{problem} in {name}"
        start = answer.get("answer_start")
        if start is None:
            return rp.reason(rp.MISSING_FIELD, f"'answer_start' in {name}")
        if isinstance(start, float) and start.is_integer():
            start = int(start)
        if isinstance(start, bool) or not isinstance(start, int):
            return rp.reason(
                rp.BAD_ANSWER_START, f"{start!r} in {name} is not an integer"
            )
        end = start + len(text)
        if start < 0 or end > len(context):
            return rp.reason(
                rp.ANSWER_OUTSIDE_CONTEXT,
                f"{name} {text!r} spans characters {start}..{end}, the "
                f"context has {len(context)}",
            )
        if context[start:end] != text:
            return rp.reason(
                rp.ANSWER_MISMATCH,
                f"{name} is {text!r} but the context has "
                f"{context[start:end]!r} at {start}",
            )
    return None


def read_squad(path):
    """Reads a SQuAD v1.1 JSON file into question-answer examples.

    The layout is `{"data": [{"paragraphs": [{"context": ..., "qas": [{"id",
    "question", "answers": [{"text", "answer_start"}]}]}]}]}`. A question is
    a row: it is skipped and reported (its JSON path, e.g.
    `data[0].paragraphs[2].qas[1] (id 57a)`, and reason) when a field is
    missing or empty, it has no answers (SQuAD v2's unanswerable questions
    too), an answer lies outside its context or does not match the context
    at `answer_start`, or its id was seen before.

    Args:
        path: the JSON file.

    Returns:
        `(examples, report)`: a list of `QAExample` and a `ReadReport`.

    Raises:
        TaskDataError: a missing file, a file that is not JSON or not the
            SQuAD layout, or one with no valid question.

    Example:

    ```python
    import json
    import pathlib
    import tempfile

    from keras_llm.data.tasks import read_squad

    squad = {"data": [{"paragraphs": [{
        "context": "Paris is the capital of France.",
        "qas": [{"id": "q1", "question": "What is the capital?",
                 "answers": [{"text": "Paris", "answer_start": 0}]}],
    }]}]}
    path = pathlib.Path(tempfile.mkdtemp()) / "dev.json"
    path.write_text(json.dumps(squad))
    examples, report = read_squad(path)
    print(examples[0].answer_text, report.summary())
    ```
    """
    path = _check_file(path)
    try:
        with open(path, encoding="utf-8-sig") as f:
            payload = json.load(f)
    except UnicodeDecodeError as e:
        raise _decode_error(path, e) from e
    except json.JSONDecodeError as e:
        raise TaskDataError(
            f"SQuAD file {path} is not JSON ({e.msg} at line {e.lineno}, "
            f"column {e.colno})"
        ) from e
    if not isinstance(payload, dict) or not isinstance(
        payload.get("data"), list
    ):
        raise TaskDataError(
            f"{path} is not a SQuAD file: expected a JSON object "
            '{"data": [{"paragraphs": [{"context": ..., "qas": [...]}]}]}'
        )
    report = ReadReport(path)
    examples, seen = [], {}
    for i, article in enumerate(payload["data"]):
        where = f"data[{i}]"
        paragraphs = (
            article.get("paragraphs") if isinstance(article, dict) else None
        )
        if not isinstance(paragraphs, list):
            report.read += 1
            report.skip(where, rp.reason(rp.MISSING_FIELD, "'paragraphs'"))
            continue
        for j, paragraph in enumerate(paragraphs):
            where = f"data[{i}].paragraphs[{j}]"
            qas = paragraph.get("qas") if isinstance(paragraph, dict) else None
            if not isinstance(qas, list):
                report.read += 1
                report.skip(where, rp.reason(rp.MISSING_FIELD, "'qas'"))
                continue
            context = paragraph.get("context")
            for k, qa in enumerate(qas):
                report.read += 1
                where = f"data[{i}].paragraphs[{j}].qas[{k}]"
                if not isinstance(qa, dict):
                    report.skip(
                        where, rp.reason(rp.NOT_AN_OBJECT, type(qa).__name__)
                    )
                    continue
                if qa.get("id") not in (None, ""):
                    where += f" (id {qa['id']})"
                problem = _qa_problem(qa, context, where)
                qid = str(qa.get("id"))
                if not problem and qid in seen:
                    problem = rp.reason(
                        rp.DUPLICATE_ID, f"first at {seen[qid]}"
                    )
                if problem:
                    report.skip(where, problem)
                    continue
                seen[qid] = where
                answers = qa["answers"]
                examples.append(
                    QAExample(
                        id=qid,
                        question=qa["question"],
                        context=context,
                        answer_text=answers[0]["text"],
                        answer_start=int(answers[0]["answer_start"]),
                        answers=tuple(a["text"] for a in answers),
                        answer_starts=tuple(
                            int(a["answer_start"]) for a in answers
                        ),
                    )
                )
    report.kept = len(examples)
    rp.check_not_empty(report, "questions")
    return examples, report
