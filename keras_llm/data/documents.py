"""Documents and the per-stage accounting of the data-preparation stages.

Every stage of `keras-llm data` (read, extract, clean, dedup, ...) is a
generator over `Document`s that takes a `StageReport`: each document that
comes in is either yielded or dropped with a reason, so that
`docs_in == kept + sum(dropped.values())` holds for every stage of every
run. Written here because no library of the field keeps that account.
"""

import collections
import dataclasses


@dataclasses.dataclass
class Document:
    """One document flowing through the data stages.

    Attributes:
        text: the content: HTML before `extract`, plain text after.
        source: where it came from, for messages: `path`, or
            `path#record=N` for a record of a WARC/JSONL file.
        url: the page's URL, if known (WARC target URI, JSONL `url`).
        title: the page title, if known (set by `extract`).
        content_type: `"text/html"` or `"text/plain"`.
        metadata: anything else worth keeping (`{"warc_date": ...}`).
    """

    text: str
    source: str
    url: str | None = None
    title: str | None = None
    content_type: str = "text/plain"
    metadata: dict = dataclasses.field(default_factory=dict)

    def to_json(self):
        """A JSON-serialisable dict (the JSONL line of a prepared file)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, record):
        """The inverse of `to_json`; unknown keys go to `metadata`."""
        fields = {f.name for f in dataclasses.fields(cls)}
        known = {k: v for k, v in record.items() if k in fields}
        extra = {k: v for k, v in record.items() if k not in fields}
        known.setdefault("source", "")
        document = cls(**known)
        document.metadata = {**extra, **document.metadata}
        return document


class StageReport:
    """What one stage took in, kept, and dropped by reason.

    A stage calls `seen()` for each document that comes in, then either
    `kept()` or `drop(reason, source)`. `check()` raises if the account
    does not balance. `examples` keeps the first few sources per reason so
    that a report can name the files and records.

    Example:

    ```python
    from keras_llm.data.documents import StageReport

    report = StageReport("clean")
    for text in ["a fine page", ""]:
        report.seen()
        if text:
            report.kept()
        else:
            report.drop("empty", "page-2.html")
    report.check()
    print(report.summary())  # clean: 2 in, 1 kept, 1 dropped (empty: 1)
    ```
    """

    def __init__(self, stage, max_examples=5):
        self.stage = stage
        self.docs_in = 0
        self.kept_count = 0
        self.dropped = collections.Counter()
        self.examples = collections.defaultdict(list)
        self.bytes_in = 0
        self.bytes_out = 0
        self.max_examples = max_examples

    def seen(self, nbytes=0):
        """Counts a document coming in (and its size in bytes)."""
        self.docs_in += 1
        self.bytes_in += nbytes

    def kept(self, nbytes=0):
        """Counts a document going out."""
        self.kept_count += 1
        self.bytes_out += nbytes

    def drop(self, reason, source=None):
        """Counts a dropped document under `reason` (short, stable words)."""
        self.dropped[reason] += 1
        if (
            source is not None
            and len(self.examples[reason]) < self.max_examples
        ):
            self.examples[reason].append(source)

    @property
    def dropped_count(self):
        return sum(self.dropped.values())

    def check(self):
        """Raises `AssertionError` unless in == kept + dropped."""
        if self.docs_in != self.kept_count + self.dropped_count:
            raise AssertionError(
                f"{self.stage}: {self.docs_in} documents in but "
                f"{self.kept_count} kept + {self.dropped_count} dropped"
            )

    def summary(self):
        """One line: in, kept, dropped by reason."""
        text = (
            f"{self.stage}: {self.docs_in} in, {self.kept_count} kept, "
            f"{self.dropped_count} dropped"
        )
        if self.dropped:
            detail = ", ".join(
                f"{reason}: {n}" for reason, n in self.dropped.most_common()
            )
            text += f" ({detail})"
        return text

    def to_json(self):
        return {
            "stage": self.stage,
            "docs_in": self.docs_in,
            "kept": self.kept_count,
            "dropped": dict(self.dropped.most_common()),
            "examples": {k: list(v) for k, v in self.examples.items()},
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
        }
