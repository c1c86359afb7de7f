"""`prepare`: raw pages and files to tokenized shards, with a manifest.

Chains the stages of `keras_llm.data`: `read_documents` (warcio) ->
`extract` (trafilatura or resiliparse) -> `clean` (ftfy and Gopher-style
rules) -> `dedup` (datasketch MinHash LSH) -> a vocabulary
(`learn_tokenizer`: keras-hub or the `tokenizers` package) -> token shards
(`keras_llm.data.shards`, NumPy `.npy` files read by `tf.data`). Each stage
is the other modules' function; what is written here is the plumbing no
library has: streaming the kept documents to a JSONL file as they come (so
vocabulary learning and tokenizing read from disk and memory stays flat),
the document-level train/validation split, the phase markers that let an
interrupted run continue where it stopped, and the manifest that accounts
for every document.

Output folder:

```
documents.jsonl.gz   the kept documents, one `Document.to_json()` a line
tokenizer.json       the vocabulary (`load_tokenizer` reads it)
train/               token shards and their index.json
validation/          the held-out documents' shards
state.json           phase markers (what a re-run skips)
manifest.json        counts per stage, drop reasons, vocabulary, shards,
                     options, seed, versions
```
"""

import dataclasses
import gzip
import hashlib
import io
import json
import os
import random
import shutil
import time

import numpy as np

from keras_llm.data.documents import Document
from keras_llm.data.documents import StageReport
from keras_llm.data.shards import ShardWriter
from keras_llm.data.shards import choose_dtype
from keras_llm.errors import UserError

STAGES = ("read", "extract", "clean", "dedup")
DOCUMENTS_FILE = "documents.jsonl.gz"
STATE_FILE = "state.json"
MANIFEST_FILE = "manifest.json"
SPLITS = ("train", "validation")
# Options that do not change what a run writes (not fingerprinted).
_NOT_FINGERPRINTED = ("progress", "overwrite", "out")
_TOKENIZE_BATCH = 256
_COVERAGE_DOCUMENTS = 2000


@dataclasses.dataclass
class PrepareConfig:
    """Options of `prepare()`; each is also a `keras-llm data prepare` flag.

    Attributes:
        inputs: files and folders to read (WARC/ARC, HTML, text, JSONL).
        out: output folder.
        engine: HTML extractor: trafilatura or resiliparse (faster).
        max_bytes: documents larger than this many bytes are dropped.
        clean: thresholds of `CleanConfig` that replace its defaults.
        exact: drop exact duplicates (hash of the normalised text).
        near: drop near duplicates (MinHash LSH).
        threshold: Jaccard similarity above which documents are near
            duplicates.
        shingle_size: characters per shingle of the near-duplicate check.
        num_perm: MinHash permutations.
        tokenizer: vocabulary kind: character, wordpiece, sentencepiece or
            bpe (byte-level BPE).
        vocabulary_size: vocabulary size (ignored for characters).
        vocab_sample_documents: training documents (a seeded random
            sample) the vocabulary is learned from; 0 means all.
        validation_fraction: fraction of documents held out (validation
            shards and the vocabulary's coverage).
        tokens_per_shard: token ids per shard file.
        dtype: shard dtype: auto (uint16 when the vocabulary fits), uint16
            or int32.
        seed: seed of the split, the vocabulary sample and MinHash.
        overwrite: start afresh instead of continuing a run in `out`.
        progress: show a progress bar per stage.
    """

    inputs: list = dataclasses.field(default_factory=list)
    out: str = "data/prepared"
    engine: str = "trafilatura"
    max_bytes: int = 50_000_000
    clean: dict = dataclasses.field(default_factory=dict)
    exact: bool = True
    near: bool = True
    threshold: float = 0.8
    shingle_size: int = 5
    num_perm: int = 128
    tokenizer: str = "bpe"
    vocabulary_size: int = 8192
    vocab_sample_documents: int = 20_000
    validation_fraction: float = 0.1
    tokens_per_shard: int = 2**24
    dtype: str = "auto"
    seed: int = 1337
    overwrite: bool = False
    progress: bool = False

    def validate(self):
        """Raises `UserError` naming the first bad option."""
        from keras_llm.data.clean import CleanConfig
        from keras_llm.data.extract import ENGINES
        from keras_llm.data.vocab import VOCABULARY_KINDS

        check_inputs(self.inputs)
        for name in (
            "max_bytes",
            "shingle_size",
            "num_perm",
            "vocabulary_size",
            "tokens_per_shard",
        ):
            _positive_int(name, getattr(self, name))
        if (
            not isinstance(self.vocab_sample_documents, int)
            or self.vocab_sample_documents < 0
        ):
            raise UserError(
                "--vocab-sample-documents must be a non-negative integer, "
                f"got {self.vocab_sample_documents!r}"
            )
        if self.engine not in ENGINES:
            raise UserError(
                f"--engine must be one of {', '.join(ENGINES)}, "
                f"got {self.engine!r}"
            )
        if self.tokenizer not in VOCABULARY_KINDS:
            raise UserError(
                f"--tokenizer must be one of {', '.join(VOCABULARY_KINDS)}, "
                f"got {self.tokenizer!r}"
            )
        if self.dtype not in ("auto", "uint16", "int32"):
            raise UserError(
                f"--dtype must be auto, uint16 or int32, got {self.dtype!r}"
            )
        if not 0 < self.threshold <= 1:
            raise UserError(
                f"--threshold must be in (0, 1], got {self.threshold}"
            )
        if not 0 <= self.validation_fraction < 1:
            raise UserError(
                "--validation-fraction must be in [0, 1), got "
                f"{self.validation_fraction}"
            )
        names = {f.name for f in dataclasses.fields(CleanConfig)}
        unknown = sorted(set(self.clean) - names)
        if unknown:
            raise UserError(
                f"unknown clean option(s) {', '.join(unknown)}; expected "
                f"fields of CleanConfig: {', '.join(sorted(names))}"
            )

    def clean_config(self):
        """The `CleanConfig` these options describe."""
        from keras_llm.data.clean import CleanConfig

        return CleanConfig(**self.clean)


def _positive_int(name, value):
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise UserError(
            f"--{name.replace('_', '-')} must be a positive integer, "
            f"got {value!r}"
        )


def check_inputs(inputs):
    """Raises `UserError` unless `inputs` is a non-empty list of existing
    files and folders (checked before any work starts)."""
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    if not inputs:
        raise UserError("no inputs: give files or folders to read")
    for path in inputs:
        if not os.path.exists(path):
            raise UserError(f"input {os.fspath(path)}: no such file or folder")


# --------------------------------------------------------------- progress


class _Progress:
    """A `rich` progress display with one task per stage, or nothing."""

    def __init__(self, enabled):
        self._bar = None
        self._tasks = {}
        if enabled:
            import rich.progress

            self._bar = rich.progress.Progress(
                rich.progress.SpinnerColumn(),
                rich.progress.TextColumn("{task.description:<10}"),
                rich.progress.BarColumn(),
                rich.progress.TextColumn("{task.fields[info]}"),
                rich.progress.TimeElapsedColumn(),
                transient=True,
            )

    def __enter__(self):
        if self._bar is not None:
            self._bar.start()
        return self

    def __exit__(self, *exc):
        if self._bar is not None:
            self._bar.stop()

    def add(self, name, total=None):
        if self._bar is not None:
            self._tasks[name] = self._bar.add_task(name, total=total, info="")

    def update(self, name, **kwargs):
        if self._bar is not None and name in self._tasks:
            self._bar.update(self._tasks[name], **kwargs)

    def counted(self, documents, name, report=None):
        """Passes `documents` through, counting them (and the bytes read,
        given the stage's `report`) on the stage's task."""
        if self._bar is None:
            yield from documents
            return
        self.add(name)
        count = 0
        for document in documents:
            count += 1
            if count % 8 == 0:
                info = f"{count} docs"
                if report is not None:
                    info += f", {report.bytes_in / 1e6:.1f} MB read"
                self.update(name, info=info)
            yield document
        self.update(name, info=f"{count} docs", total=1, completed=1)


# -------------------------------------------------------- document files


def write_documents(documents, path):
    """Writes documents as JSONL (gzip if `path` ends in `.gz`), atomically.

    Args:
        documents: an iterable of `Document`s (consumed as it streams).
        path: the file to write; a temporary `path.tmp` is renamed to it
            once every document is written.

    Returns:
        The number of documents written.
    """
    tmp = f"{path}.tmp"
    count = 0
    raw = open(tmp, "wb")
    try:
        stream = (
            gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=3)
            if str(path).endswith(".gz")
            else raw
        )
        with io.TextIOWrapper(stream, encoding="utf-8") as f:
            for document in documents:
                f.write(json.dumps(document.to_json(), ensure_ascii=False))
                f.write("\n")
                count += 1
    finally:
        raw.close()
    os.replace(tmp, path)
    return count


def read_documents_file(path):
    """Streams the `Document`s of a file written by `write_documents`."""
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield Document.from_json(json.loads(line))


# ---------------------------------------------------------------- stages


def stage_chain(inputs, config, reports, progress=None, stages=STAGES):
    """The streaming chain read -> extract -> clean -> dedup (or a part).

    Args:
        inputs: files and folders.
        config: a `PrepareConfig` (the stages' options).
        reports: a dict filled with one `StageReport` per stage.
        progress: a `_Progress` or `None`.
        stages: which stages after `read` to run, in order.

    Returns:
        An iterator of the documents the last stage keeps.
    """
    from keras_llm.data.warc import read_documents

    progress = progress or _Progress(False)
    reports["read"] = StageReport("read")
    documents = read_documents(
        list(inputs), reports["read"], max_bytes=config.max_bytes
    )
    documents = progress.counted(documents, "read", reports["read"])
    for stage in stages:
        if stage == "read":
            continue
        report = reports[stage] = StageReport(stage)
        if stage == "extract":
            from keras_llm.data.extract import extract

            documents = extract(documents, report, engine=config.engine)
        elif stage == "clean":
            from keras_llm.data.clean import clean

            documents = clean(documents, report, config=config.clean_config())
        elif stage == "dedup":
            from keras_llm.data.dedup import dedup

            documents = dedup(
                documents,
                report,
                exact=config.exact,
                near=config.near,
                threshold=config.threshold,
                shingle_size=config.shingle_size,
                num_perm=config.num_perm,
                seed=config.seed,
            )
        else:
            raise ValueError(f"unknown stage {stage!r}")
        documents = progress.counted(documents, stage)
    return documents


def check_reports(reports):
    """Checks every stage's account and the chain's: each stage takes in
    what the one before kept, and the first stage's documents in equal the
    last one's kept plus every drop. Raises `AssertionError` otherwise.

    Args:
        reports: `StageReport`s (or their `to_json()` dicts) in chain order.

    Returns:
        The overall account: `{"docs_in", "kept", "dropped"}`.
    """
    reports = [r.to_json() if hasattr(r, "to_json") else r for r in reports]
    dropped = {}
    for i, r in enumerate(reports):
        if r["docs_in"] != r["kept"] + sum(r["dropped"].values()):
            raise AssertionError(
                f"{r['stage']}: {r['docs_in']} documents in but {r['kept']} "
                f"kept + {sum(r['dropped'].values())} dropped"
            )
        if i and r["docs_in"] != reports[i - 1]["kept"]:
            raise AssertionError(
                f"{r['stage']} took in {r['docs_in']} documents but "
                f"{reports[i - 1]['stage']} kept {reports[i - 1]['kept']}"
            )
        for reason, n in r["dropped"].items():
            dropped[reason] = dropped.get(reason, 0) + n
    overall = {
        "docs_in": reports[0]["docs_in"] if reports else 0,
        "kept": reports[-1]["kept"] if reports else 0,
        "dropped": dropped,
    }
    if overall["docs_in"] != overall["kept"] + sum(dropped.values()):
        raise AssertionError(
            f"{overall['docs_in']} documents in but {overall['kept']} kept "
            f"+ {sum(dropped.values())} dropped over all stages"
        )
    return overall


def run_stages(inputs, out, stages, config=None, progress=False):
    """Runs some stages after `read` and writes the kept documents as JSONL.

    The entry point of `keras-llm data extract|clean|dedup`: e.g.
    `stages=("extract",)` writes extracted text, which `clean` can read.

    Args:
        inputs: files and folders.
        out: the JSONL file to write (gzip if it ends in `.gz`).
        stages: stage names from `"extract"`, `"clean"`, `"dedup"`.
        config: a `PrepareConfig` for the stages' options. Defaults to
            `PrepareConfig()`.
        progress: show a progress bar per stage.

    Returns:
        `{"stages": [StageReport.to_json()...], "overall": ..., "out": path}`.
    """
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    config = dataclasses.replace(config or PrepareConfig(), inputs=inputs)
    config.validate()
    folder = os.path.dirname(os.path.abspath(out))
    os.makedirs(folder, exist_ok=True)
    reports = {}
    with _Progress(progress) as bar:
        write_documents(stage_chain(inputs, config, reports, bar, stages), out)
    ordered = [reports["read"]] + [reports[s] for s in stages]
    overall = check_reports(ordered)
    return {
        "stages": [r.to_json() for r in ordered],
        "overall": overall,
        "out": os.fspath(out),
    }


# ------------------------------------------------------------- vocabulary


def _uniform(seed, index):
    digest = hashlib.blake2b(f"{seed}:{index}".encode(), digest_size=8)
    return int.from_bytes(digest.digest(), "big") / 2.0**64


def split_of(index, seed, validation_fraction, forced=None):
    """`"validation"` or `"train"` for the `index`-th document: a seeded
    hash, so the split does not depend on what else is in the corpus."""
    if index == forced or _uniform(seed, index) < validation_fraction:
        return "validation"
    return "train"


def learn_vocabulary(
    texts,
    out,
    kind="bpe",
    vocabulary_size=8192,
    sample_documents=100_000,
    validation_fraction=0.1,
    seed=1337,
):
    """Learns a vocabulary from a stream of texts and measures its coverage.

    Texts are split by `split_of`: the vocabulary is learned from a seeded
    reservoir sample of `sample_documents` training texts and its coverage
    (`vocabulary_coverage`) measured on held-out ones.

    Args:
        texts: an iterable of strings (streamed once).
        out: folder (or file) to save the tokenizer in.
        kind: tokenizer kind of `learn_tokenizer`. Defaults to `"bpe"`.
        vocabulary_size: int. Defaults to `8192`.
        sample_documents: training texts learned from (0: all). Defaults to
            `100_000`.
        validation_fraction: held-out fraction. Defaults to `0.1`.
        seed: int. Defaults to `1337`.

    Returns:
        A dict: `kind`, `vocabulary_size`, `path`, `coverage`, `documents`
        (per split), `sampled`, `forced_validation`, and `tokenizer`.

    Raises:
        UserError: if there is no text to learn from.
    """
    from keras_llm.data.vocab import learn_tokenizer
    from keras_llm.data.vocab import save_tokenizer
    from keras_llm.data.vocab import vocabulary_coverage

    rng = random.Random(seed)
    sample = []  # (index, text) reservoir of training texts
    held_out = []
    counts = {"train": 0, "validation": 0}
    last = None
    for i, text in enumerate(texts):
        last = (i, text)
        split = split_of(i, seed, validation_fraction)
        counts[split] += 1
        if split == "validation":
            if len(held_out) < _COVERAGE_DOCUMENTS:
                held_out.append(text)
            continue
        seen = counts["train"]
        if not sample_documents or len(sample) < sample_documents:
            sample.append((i, text))
        else:
            j = rng.randrange(seen)
            if j < sample_documents:
                sample[j] = (i, text)
    forced = None
    total = counts["train"] + counts["validation"]
    if validation_fraction > 0 and counts["validation"] == 0 and total >= 2:
        # Hold out at least one document: the last one.
        forced, text = last
        counts = {"train": total - 1, "validation": 1}
        sample = [(i, t) for i, t in sample if i != forced]
        held_out = [text]
    sample.sort()
    train_texts = [t for _, t in sample]
    if not any(t.strip() for t in train_texts):
        raise UserError(
            "no training text to learn a vocabulary from: every document "
            "was dropped or held out (see the table of drop reasons)"
        )
    tokenizer = learn_tokenizer(
        train_texts, kind=kind, vocabulary_size=vocabulary_size
    )
    if held_out:
        coverage = vocabulary_coverage(tokenizer, held_out)
    else:  # no held-out text: measure on the training sample, and say so
        coverage = vocabulary_coverage(tokenizer, train_texts[:100])
    coverage = {k: _plain(v) for k, v in dict(coverage).items()}
    coverage["held_out"] = bool(held_out)
    if not str(out).endswith(".json"):
        os.makedirs(out, exist_ok=True)
    path = save_tokenizer(tokenizer, out)
    return {
        "kind": kind,
        "vocabulary_size": int(tokenizer.vocabulary_size()),
        "path": os.fspath(path),
        "coverage": coverage,
        "documents": counts,
        "sampled": len(train_texts),
        "forced_validation": forced,
        "tokenizer": tokenizer,
    }


def _plain(value):
    if isinstance(value, np.generic):
        return value.item()
    return value


# --------------------------------------------------------------- shards


def separator_id(tokenizer):
    """The id put after every document: the tokenizer's end-of-text token
    if it has one (`[EOS]`, `</s>`, `<|endoftext|>`, ...), else the id of
    `"\\n"` (character vocabularies), else `None`."""
    for attribute in ("end_token_id", "eos_token_id"):
        value = getattr(tokenizer, attribute, None)
        if isinstance(value, (int, np.integer)):
            return int(value)
    vocabulary = list(tokenizer.get_vocabulary())
    for token in ("<|endoftext|>", "[EOS]", "</s>", "<eos>", "\n"):
        if token in vocabulary:
            return vocabulary.index(token)
    return None


def _tokenize_batch(tokenizer, texts):
    """Token ids of each text (a list of 1-D arrays)."""
    import tensorflow as tf

    ids = tokenizer.tokenize(tf.constant(texts, dtype=tf.string))
    if isinstance(ids, tf.RaggedTensor):
        ids = ids.to_list()
    elif isinstance(ids, tf.Tensor):
        ids = ids.numpy()
    return [np.asarray(row, dtype=np.int64).reshape(-1) for row in ids]


def write_shards(documents, out, tokenizer, seed, fraction, forced, **options):
    """Tokenizes documents into `out/train` and `out/validation` shards,
    continuing shards already written there.

    Args:
        documents: an iterable of texts, in the same order on every call.
        out: the output folder.
        tokenizer: a keras-hub tokenizer.
        seed, fraction, forced: the split (`split_of`).
        **options: `tokens_per_shard`, `dtype`, `progress` (a `_Progress`),
            `total` (documents, for the bar).

    Returns:
        Per split: `{"folder", "files", "tokens", "documents"}`.
    """
    sep = separator_id(tokenizer)
    dtype = options.get("dtype", "auto")
    if dtype == "auto":
        dtype = choose_dtype(tokenizer.vocabulary_size())
    writers = {
        split: ShardWriter(
            os.path.join(out, split),
            options.get("tokens_per_shard", 2**24),
            dtype=dtype,
            separator_id=sep,
        )
        for split in SPLITS
    }
    start = {s: w.resume_position[0] for s, w in writers.items()}
    seen = {s: 0 for s in SPLITS}
    progress = options.get("progress") or _Progress(False)
    progress.add("tokenize", total=options.get("total"))
    pending = []

    def flush():
        if not pending:
            return
        ids = _tokenize_batch(tokenizer, [t for _, t in pending])
        for (split, _), row in zip(pending, ids):
            writers[split].add(row)
        pending.clear()

    done = 0
    for i, text in enumerate(documents):
        split = split_of(i, seed, fraction, forced)
        index = seen[split]
        seen[split] += 1
        done += 1
        if writers[split].complete or index < start[split]:
            continue  # already in a shard on disk
        pending.append((split, text))
        if len(pending) >= _TOKENIZE_BATCH:
            flush()
            progress.update("tokenize", completed=done, info=f"{done} docs")
    flush()
    progress.update("tokenize", completed=done, info=f"{done} docs")
    result = {}
    for split, writer in writers.items():
        writer.close()
        result[split] = {
            "folder": split,
            "files": [s["file"] for s in writer.shards],
            "tokens": writer.tokens,
            "documents": seen[split],
            "dtype": writer.dtype,
            "separator_id": sep,
        }
    return result


# --------------------------------------------------------------- prepare


def _fingerprint(config):
    options = {
        k: v
        for k, v in dataclasses.asdict(config).items()
        if k not in _NOT_FINGERPRINTED
    }
    options["inputs"] = [os.path.abspath(p) for p in config.inputs]
    text = json.dumps(options, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _load_state(path):
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(
            f"{path} is damaged ({e}); re-run with --overwrite"
        ) from e


def _save_state(path, state):
    from keras_llm.data.shards import _write_json

    _write_json(path, state)


def _refuse_foreign_files(out):
    names = (DOCUMENTS_FILE, MANIFEST_FILE, "tokenizer.json") + SPLITS
    for name in names:
        if os.path.exists(os.path.join(out, name)):
            raise UserError(
                f"{out} already holds {name} not written by an unfinished "
                "prepare run; use an empty --out, or --overwrite to replace it"
            )


def _start_fresh(out):
    for name in (DOCUMENTS_FILE, STATE_FILE, MANIFEST_FILE, "tokenizer.json"):
        path = os.path.join(out, name)
        if os.path.exists(path):
            os.remove(path)
    for split in SPLITS:
        shutil.rmtree(os.path.join(out, split), ignore_errors=True)


def prepare(config=None, **options):
    """Turns pages and files into tokenized shards and a manifest.

    Streams `read_documents` -> `extract` -> `clean` -> `dedup`, writing
    the kept documents to `documents.jsonl.gz` as they come; learns the
    vocabulary from them (`learn_vocabulary`); tokenizes them into
    `train/` and `validation/` shards (`ShardWriter`), and writes
    `manifest.json`. Re-running with the same options and `out` after an
    interruption continues: a finished documents or vocabulary phase is
    not redone, and shards already written are kept and tokenizing goes
    on from the document where the last one ended.

    Args:
        config: a `PrepareConfig`. Defaults to `PrepareConfig(**options)`.
        **options: `PrepareConfig` fields, when `config` is `None`.

    Returns:
        The manifest (also written to `out/manifest.json`).

    Raises:
        UserError: for a bad option, a missing input, an `out` holding a
            run with other options (without `overwrite`), or input with no
            document left to learn a vocabulary from.

    Example:

    ```python
    import os
    import tempfile

    from keras_llm.data.corpus import default_corpus
    from keras_llm.data.prepare import prepare
    from keras_llm.data.shards import shard_dataset

    pages = tempfile.mkdtemp()
    for i, text in enumerate(default_corpus()[:20]):
        with open(os.path.join(pages, f"{i}.txt"), "w") as f:
            f.write(text)
    out = tempfile.mkdtemp()
    manifest = prepare(inputs=[pages], out=out, tokenizer="character")
    print(manifest["overall"])  # {'docs_in': 20, 'kept': 14, 'dropped': ...}
    train = shard_dataset(out, sequence_length=64, batch_size=8)
    ```
    """
    if config is None:
        config = PrepareConfig(**options)
    elif options:
        config = dataclasses.replace(config, **options)
    if isinstance(config.inputs, (str, os.PathLike)):
        config = dataclasses.replace(config, inputs=[config.inputs])
    config.validate()
    started = time.time()
    out = os.fspath(config.out)
    if os.path.exists(out) and not os.path.isdir(out):
        raise UserError(f"--out {out} is a file, not a folder")
    os.makedirs(out, exist_ok=True)
    state_path = os.path.join(out, STATE_FILE)
    fingerprint = _fingerprint(config)
    state = None if config.overwrite else _load_state(state_path)
    if state is not None and state.get("fingerprint") != fingerprint:
        raise UserError(
            f"{out} holds a prepare run with other inputs or options; use "
            "another --out or --overwrite"
        )
    if state is None:
        if not config.overwrite:
            _refuse_foreign_files(out)
        _start_fresh(out)
        state = {"fingerprint": fingerprint, "phases": {}}
        _save_state(state_path, state)
    phases = state["phases"]
    documents_path = os.path.join(out, DOCUMENTS_FILE)

    with _Progress(config.progress) as progress:
        if "documents" not in phases:
            reports = {}
            chain = stage_chain(config.inputs, config, reports, progress)
            count = write_documents(chain, documents_path)
            ordered = [reports[s] for s in STAGES]
            overall = check_reports(ordered)
            if count != overall["kept"]:
                raise AssertionError(
                    f"wrote {count} documents but dedup kept {overall['kept']}"
                )
            phases["documents"] = {
                "stages": [r.to_json() for r in ordered],
                "overall": overall,
                "documents": count,
            }
            _save_state(state_path, state)

        def texts():
            for document in read_documents_file(documents_path):
                yield document.text

        if "vocabulary" not in phases:
            progress.add("vocabulary")
            vocab = learn_vocabulary(
                texts(),
                out,
                kind=config.tokenizer,
                vocabulary_size=config.vocabulary_size,
                sample_documents=config.vocab_sample_documents,
                validation_fraction=config.validation_fraction,
                seed=config.seed,
            )
            vocab.pop("tokenizer")
            vocab["path"] = os.path.basename(vocab["path"])
            progress.update("vocabulary", total=1, completed=1, info="done")
            phases["vocabulary"] = vocab
            _save_state(state_path, state)
        vocab = phases["vocabulary"]

        if "shards" not in phases:
            from keras_llm.data.vocab import load_tokenizer

            tokenizer = load_tokenizer(os.path.join(out, vocab["path"]))
            phases["shards"] = write_shards(
                texts(),
                out,
                tokenizer,
                config.seed,
                config.validation_fraction,
                vocab["forced_validation"],
                tokens_per_shard=config.tokens_per_shard,
                dtype=config.dtype,
                progress=progress,
                total=phases["documents"]["documents"],
            )
            _save_state(state_path, state)

    manifest = _manifest(config, state, time.time() - started)
    from keras_llm.data.shards import _write_json

    _write_json(os.path.join(out, MANIFEST_FILE), manifest)
    return manifest


def _manifest(config, state, seconds):
    from keras_llm.pretraining import versions

    phases = state["phases"]
    options = dataclasses.asdict(config)
    options.pop("progress")
    return {
        "kind": "keras_llm.data.prepare",
        "inputs": [os.fspath(p) for p in config.inputs],
        "stages": phases["documents"]["stages"],
        "overall": phases["documents"]["overall"],
        "documents": {
            "file": DOCUMENTS_FILE,
            "count": phases["documents"]["documents"],
            "forced_validation": phases["vocabulary"]["forced_validation"],
            **{split: phases["shards"][split]["documents"] for split in SPLITS},
        },
        "vocabulary": {
            k: v
            for k, v in phases["vocabulary"].items()
            if k in ("kind", "vocabulary_size", "path", "coverage", "sampled")
        },
        "shards": phases["shards"],
        "seed": config.seed,
        "options": options,
        "versions": versions(),
        "seconds_this_run": round(seconds, 3),
    }


# ----------------------------------------------------------------- table


def report_table(stages, title="keras-llm data"):
    """A `rich` table: stage, documents in, kept, dropped, by reason.

    Args:
        stages: `StageReport`s or their `to_json()` dicts, in chain order.
        title: the table's title.

    Returns:
        A `rich.table.Table` (print it with `rich.console.Console`).
    """
    from rich.table import Table

    rows = [r.to_json() if hasattr(r, "to_json") else r for r in stages]
    table = Table(title=title)
    table.add_column("stage")
    table.add_column("documents in", justify="right")
    table.add_column("kept", justify="right")
    table.add_column("dropped", justify="right")
    table.add_column("dropped by reason")
    for r in rows:
        dropped = r["dropped"]
        table.add_row(
            r["stage"],
            str(r["docs_in"]),
            str(r["kept"]),
            str(sum(dropped.values())),
            ", ".join(f"{k}: {n}" for k, n in dropped.items()) or "-",
        )
    if len(rows) > 1:
        overall = check_reports(rows)
        table.add_row(
            "total",
            str(overall["docs_in"]),
            str(overall["kept"]),
            str(sum(overall["dropped"].values())),
            "",
            style="bold",
        )
    return table
