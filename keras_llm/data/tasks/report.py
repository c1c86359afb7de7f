"""What a task reader read, kept and skipped (`ReadReport`)."""

import collections
import dataclasses

from keras_llm.errors import UserError

# Reasons a row is skipped; each skip reason starts with one of these, then
# ": " and the detail, so `ReadReport.counts` can group them.
MISSING_FIELD = "missing field"
EMPTY_TEXT = "empty text"
NOT_TEXT = "not text"
UNKNOWN_LABEL = "unknown label"
BAD_JSON = "bad JSON"
NOT_AN_OBJECT = "not a JSON object"
WRONG_COLUMN_COUNT = "wrong column count"
NO_ANSWERS = "no answers"
BAD_ANSWER_START = "bad answer_start"
ANSWER_OUTSIDE_CONTEXT = "answer outside context"
ANSWER_MISMATCH = "answer mismatch"
DUPLICATE_ID = "duplicate id"


class TaskDataError(UserError):
    """A task file that cannot be read at all (missing, not CSV/JSON, ...)."""


@dataclasses.dataclass
class ReadReport:
    """What a task reader read from one file.

    Every row the reader saw is either kept or listed in `skipped` with
    where it is and why, so `read == kept + len(skipped)`. Blank lines are
    not rows; they are counted in `blank_lines` only.

    Attributes:
        file: the path read.
        read: rows seen (CSV records, JSONL lines, SQuAD questions).
        kept: rows returned.
        skipped: list of `(line, reason)`: `line` is the 1-based line number
            of a CSV or JSONL row, or the JSON path of a SQuAD item such as
            `"data[0].paragraphs[2].qas[1] (id 57a)"`; `reason` is
            `"<kind>: <detail>"`, the kind one of `unknown label`,
            `empty text`, `missing field`, `bad JSON`, ...
        blank_lines: blank lines passed over.

    Example:

    ```python
    from keras_llm.data.tasks import ReadReport

    report = ReadReport("train.csv", read=3, kept=2)
    report.skip(4, "unknown label: 'neutral'")
    print(report.summary())
    # train.csv: read 3 rows, kept 2, skipped 1 (unknown label: 1)
    ```
    """

    file: str
    read: int = 0
    kept: int = 0
    skipped: list = dataclasses.field(default_factory=list)
    blank_lines: int = 0

    def skip(self, line, reason):
        """Records a skipped row."""
        self.skipped.append((line, reason))

    @property
    def counts(self):
        """Skipped rows by kind of reason, as a dict (most frequent first)."""
        kinds = collections.Counter(r.split(":", 1)[0] for _, r in self.skipped)
        return dict(kinds.most_common())

    def summary(self):
        """One line: file, rows read, kept and skipped by reason."""
        text = f"{self.file}: read {self.read} rows, kept {self.kept}"
        if self.skipped:
            detail = ", ".join(f"{k}: {n}" for k, n in self.counts.items())
            text += f", skipped {len(self.skipped)} ({detail})"
        return text

    def __str__(self, limit=20):
        lines = [self.summary()]
        for line, reason in self.skipped[:limit]:
            lines.append(f"  {self.file}:{line}: {reason}")
        if len(self.skipped) > limit:
            lines.append(f"  ... and {len(self.skipped) - limit} more")
        return "\n".join(lines)

    def __rich__(self):
        """The summary and a `rich` table of the skipped rows (`rich.print`)."""
        from rich.console import Group
        from rich.table import Table
        from rich.text import Text

        if not self.skipped:
            return Text(self.summary())
        table = Table()
        table.add_column("line")
        table.add_column("reason")
        for line, reason in self.skipped:
            table.add_row(str(line), reason)
        return Group(Text(self.summary()), table)


def reason(kind, detail):
    return f"{kind}: {detail}"


def check_not_empty(report, what):
    """Raises when a file gave no usable row at all."""
    if report.kept:
        return
    if report.read:
        raise TaskDataError(
            f"{report.file} has no valid {what}: {report.summary()}; "
            f"first problem: line {report.skipped[0][0]}: "
            f"{report.skipped[0][1]}"
        )
    raise TaskDataError(f"{report.file} has no {what}; give it some")
