"""The `keras-llm` command: thin subcommands over library functions.

`keras-llm pretrain` calls `keras_llm.pretrain(PretrainConfig)`, with one
flag per `PretrainConfig` field, `keras-llm tune` calls
`keras_llm.tuning.tune(TuneConfig)` the same way, `keras-llm finetune`
calls `keras_llm.finetuning.finetune(FinetuneConfig)`, and `keras-llm
generate` calls `keras_llm.generate_text`, and `keras-llm data prepare`
calls `keras_llm.data.prepare.prepare(PrepareConfig)` (`data crawl`,
`extract`, `clean`, `dedup` and `vocab` call the stage functions). `--config FILE` reads a YAML
mapping of the same options; flags given on the command line win over it.
"""

import argparse
import dataclasses
import inspect
import os
import sys
import typing

from keras_llm.errors import UserError

_NOT_FLAGS = {"model_overrides", "verbose"}


def _flag(name):
    return "--" + name.replace("_", "-")


_METAVARS = {"corpus": "PATH"}
_CONVERTERS = {int: int, float: float}


def add_config_flags(parser, config_cls, only=None, skip=()):
    """Adds one flag per field of a config dataclass to `parser`.

    The help text of each flag is its line in the class docstring's
    `Attributes:`. Booleans get `--x/--no-x`, list and tuple fields (`list`
    or `list[int]`, `list[float]`, `tuple`) take one or more values, and
    fields in `_NOT_FLAGS` are left to `--config FILE`. Unset flags are
    absent from the parsed namespace when the parser has
    `argument_default=SUPPRESS`. `only` (names) restricts the flags to
    those fields; fields in `skip` get none.
    """
    docs = {}
    for klass in reversed(config_cls.__mro__):  # base classes first
        if dataclasses.is_dataclass(klass):
            docs.update(_attribute_docs(klass))
    hints = typing.get_type_hints(config_cls)
    for field in dataclasses.fields(config_cls):
        if field.name in _NOT_FLAGS or field.name in skip:
            continue
        if only is not None and field.name not in only:
            continue
        default = (
            field.default_factory()
            if field.default_factory is not dataclasses.MISSING
            else field.default
        )
        kind = hints[field.name]
        optional = False
        args = typing.get_args(kind)
        if type(None) in args and len(args) == 2:  # `X | None`
            (kind,) = [a for a in args if a is not type(None)]
            optional = True
        if kind is dict or typing.get_origin(kind) is dict:
            continue  # a mapping: `--config FILE` only
        help_text = f"{docs.get(field.name, '')} (default: {default!r})"
        flag = _flag(field.name)
        if kind in (list, tuple) or typing.get_origin(kind) in (list, tuple):
            (item,) = typing.get_args(kind)[:1] or (str,)
            parser.add_argument(
                flag,
                nargs="+",
                type=_CONVERTERS.get(item, str),
                metavar=_METAVARS.get(field.name),
                help=help_text,
            )
        elif kind is bool:
            parser.add_argument(
                flag, action=argparse.BooleanOptionalAction, help=help_text
            )
        else:
            convert = _CONVERTERS.get(kind, str)
            if optional:
                convert = _or_none(convert)
                help_text += "; none disables it"
            parser.add_argument(flag, type=convert, help=help_text)


def _or_none(convert):
    def parse(text):
        return None if text.lower() in ("none", "off") else convert(text)

    parse.__name__ = convert.__name__  # argparse names it in errors
    return parse


def _pretrain_parser(sub):
    from keras_llm.pretraining import PretrainConfig

    p = sub.add_parser(
        "pretrain",
        help="train a GPT on a text corpus (default: the embedded corpus)",
        description="Train a causal-LM GPT and write model.keras, "
        "tokenizer.json, loss_curve.png, TensorBoard logs and manifest.json "
        "into --out.",
        argument_default=argparse.SUPPRESS,
    )
    p.add_argument("--config", help="YAML file of the same options")
    add_config_flags(p, PretrainConfig)
    p.add_argument(
        "--quiet", action="store_true", help="no per-step progress bar"
    )
    return p


def _tune_parser(sub):
    from keras_llm.tuning import TuneConfig

    p = sub.add_parser(
        "tune",
        help="search learning rate, batch size and weight decay of a GPT",
        description="Train a few GPTs on the same number of tokens with "
        "hyperparameters drawn by keras-tuner and write "
        "best_hyperparameters.json, trials.json, a plot, TensorBoard logs, "
        "keras-tuner's project and manifest.json into --out.",
        argument_default=argparse.SUPPRESS,
    )
    p.add_argument("--config", help="YAML file of the same options")
    add_config_flags(p, TuneConfig)
    p.add_argument(
        "--quiet", action="store_true", help="no per-step progress bar"
    )
    return p


def _finetune_parser(sub):
    from keras_llm.finetuning import FinetuneConfig

    p = sub.add_parser(
        "finetune",
        help="fine-tune a pretrained encoder on classification, pairs or QA",
        description="Load a keras_llm .keras encoder or a keras-hub preset "
        "folder, train a task head with the backbone frozen, optionally "
        "unfreeze the top blocks at a lower learning rate, and write "
        "model.keras, tokenizer.json, metrics.json, TensorBoard logs and "
        "manifest.json into --out.",
        argument_default=argparse.SUPPRESS,
    )
    p.add_argument("--config", help="YAML file of the same options")
    add_config_flags(p, FinetuneConfig)
    p.add_argument(
        "--quiet", action="store_true", help="no per-step progress bar"
    )
    return p


_COMPRESSION = {
    "prune": (
        "PruneConfig",
        "prune_run",
        "prune a GPT's kernels to a sparsity while fine-tuning",
    ),
    "quantize": (
        "QuantizeConfig",
        "quantize_run",
        "quantize a GPT to int8 or int4 (post-training or QAT)",
    ),
    "distill": (
        "DistillConfig",
        "distill_run",
        "distil a GPT into a smaller GPT student",
    ),
}


def _compression_parser(sub, command):
    from keras_llm.compression import commands

    config_name, _, text = _COMPRESSION[command]
    p = sub.add_parser(
        command,
        help=text,
        description=text[0].upper() + text[1:] + "; print a before/after "
        "table (parameters, bytes on disk, gzip'd bytes, validation loss) "
        "and write model.keras, tokenizer.json, compression.json and "
        "manifest.json into --out.",
        argument_default=argparse.SUPPRESS,
    )
    p.add_argument("--config", help="YAML file of the same options")
    add_config_flags(p, getattr(commands, config_name))
    p.add_argument(
        "--quiet", action="store_true", help="no per-step progress bar"
    )
    return p


def run_compression(args):
    from keras_llm.compression import commands

    config_name, function, _ = _COMPRESSION[args.command]
    config_cls = getattr(commands, config_name)
    getattr(commands, function)(config_cls(**_config_options(args, config_cls)))
    return 0


def _attribute_docs(cls):
    """Maps each attribute to its text in the class docstring's
    `Attributes:` section (continuation lines joined)."""
    docs = {}
    indent = None
    name = None
    for line in inspect.cleandoc(cls.__doc__ or "").splitlines():
        stripped = line.strip()
        if stripped == "Attributes:":
            indent = -1
            continue
        if indent is None or not stripped:
            continue
        depth = len(line) - len(line.lstrip())
        if indent == -1:
            indent = depth
        if depth < indent:
            break  # the section ended
        if depth == indent and ":" in stripped:
            name, text = stripped.split(":", 1)
            name = name.strip()
            docs[name] = text.strip()
        elif name is not None:
            docs[name] += " " + stripped
    return docs


def _generate_parser(sub):
    p = sub.add_parser(
        "generate",
        help="continue a prompt with a trained model",
        description="Generate text from a model.keras written by "
        "`keras-llm pretrain` (its tokenizer.json is read from the same "
        "folder unless --tokenizer is given).",
    )
    p.add_argument("--model", required=True, help="path of model.keras")
    p.add_argument("--prompt", required=True, help="text to continue")
    p.add_argument("--max-length", type=int, default=200)
    p.add_argument("--sampler", default="top_k", help="greedy, top_k, top_p")
    p.add_argument("--tokenizer", default=None, help="path of tokenizer.json")
    p.add_argument("--seed", type=int, default=None)
    return p


_DATA_STAGE_FLAGS = {
    "extract": ("engine", "max_bytes"),
    "clean": ("max_bytes",),
    "dedup": (
        "max_bytes",
        "exact",
        "near",
        "threshold",
        "shingle_size",
        "num_perm",
        "seed",
    ),
}
_DATA_VOCAB_FLAGS = (
    "vocabulary_size",
    "vocab_sample_documents",
    "validation_fraction",
    "seed",
)


def _clean_flag_names():
    from keras_llm.data.clean import CleanConfig
    from keras_llm.data.prepare import PrepareConfig

    taken = {f.name for f in dataclasses.fields(PrepareConfig)}
    return [
        f.name for f in dataclasses.fields(CleanConfig) if f.name not in taken
    ]


def _data_parser(sub):
    from keras_llm.data.clean import CleanConfig
    from keras_llm.data.crawl import CrawlConfig
    from keras_llm.data.prepare import PrepareConfig

    p = sub.add_parser(
        "data",
        help="crawl, extract, clean, deduplicate, learn vocabularies and "
        "write token shards",
        description="Data preparation stages. `prepare` runs them all; the "
        "others run one stage each and write JSONL documents.",
    )
    data = p.add_subparsers(dest="data_command", required=True)
    inputs_help = "files or folders: WARC/ARC (gzip too), HTML, text, JSONL"

    def stage_parser(name, help_text, description):
        q = data.add_parser(
            name,
            help=help_text,
            description=description,
            argument_default=argparse.SUPPRESS,
        )
        q.add_argument("inputs", nargs="+", metavar="INPUT", help=inputs_help)
        q.add_argument("--config", help="YAML file of the same options")
        q.add_argument("--quiet", action="store_true", help="no progress bar")
        return q

    q = stage_parser(
        "prepare",
        "read, extract, clean, dedup, learn a vocabulary, write shards",
        "Chain read -> extract -> clean -> dedup -> vocabulary -> token "
        "shards and write documents.jsonl.gz, tokenizer.json, train/ and "
        "validation/ shards and manifest.json into --out. Re-running with "
        "the same options continues an interrupted run.",
    )
    add_config_flags(q, PrepareConfig, skip=("inputs", "clean", "progress"))
    add_config_flags(q, CleanConfig, only=_clean_flag_names())

    q = data.add_parser(
        "crawl",
        help="crawl from seed URLs into gzipped WARC files",
        description="Crawl politely (robots.txt, per-host delay, limits) "
        "from seed URLs and write the pages as gzipped WARC files into "
        "--out.",
        argument_default=argparse.SUPPRESS,
    )
    q.add_argument("seeds", nargs="+", metavar="URL", help="seed URLs")
    q.add_argument("--out", required=True, help="folder for the WARC files")
    q.add_argument("--config", help="YAML file of the same options")
    q.add_argument("--quiet", action="store_true", help="no progress bar")
    add_config_flags(q, CrawlConfig, skip=("out", "seeds"))

    for name, help_text in (
        ("extract", "main text of HTML pages (trafilatura or resiliparse)"),
        ("clean", "unicode repair and quality filters (on extracted text)"),
        ("dedup", "drop exact and near duplicates (MinHash LSH)"),
    ):
        q = stage_parser(
            name,
            help_text,
            f"Read documents, run `{name}` on them and write the kept ones "
            "as JSONL (gzip if --out ends in .gz), which the next stage "
            "reads.",
        )
        q.add_argument("--out", required=True, help="the JSONL file to write")
        add_config_flags(q, PrepareConfig, only=_DATA_STAGE_FLAGS[name])
        if name == "clean":
            add_config_flags(q, CleanConfig, only=_clean_flag_names())

    q = stage_parser(
        "vocab",
        "learn a vocabulary and report its coverage on held-out text",
        "Learn a character, WordPiece, SentencePiece or byte-level BPE "
        "vocabulary from documents (e.g. the JSONL of `data dedup`), "
        "save it as tokenizer.json in --out and print its coverage on "
        "held-out documents.",
    )
    q.add_argument("--out", required=True, help="folder for tokenizer.json")
    q.add_argument(
        "--kind",
        help="character, wordpiece, sentencepiece or bpe (default: 'bpe')",
    )
    add_config_flags(q, PrepareConfig, only=_DATA_VOCAB_FLAGS)
    return p


def _data_options(args, config_cls):
    """Options of `config_cls` from `--config FILE` and the given flags;
    `CleanConfig` fields go into a nested `clean` mapping."""
    from keras_llm.data.clean import CleanConfig

    options = {}
    if getattr(args, "config", None):
        options.update(_load_config_file(args.config))
    skip = ("command", "data_command", "config", "quiet", "inputs", "seeds")
    options.update({k: v for k, v in vars(args).items() if k not in skip})
    names = {f.name for f in dataclasses.fields(config_cls)}
    if "clean" in names:
        clean = dict(options.pop("clean", None) or {})
        for field in dataclasses.fields(CleanConfig):
            if field.name in options and field.name not in names:
                value = options.pop(field.name)
                if isinstance(field.default, tuple) and isinstance(value, list):
                    value = tuple(value)
                clean[field.name] = value
        if clean:
            options["clean"] = clean
    unknown = sorted(set(options) - names)
    if unknown:
        raise UserError(f"unknown option(s) {', '.join(unknown)}")
    return options


def _console():
    from rich.console import Console

    return Console()


def run_data(args):
    from keras_llm.data import prepare as prep

    console = _console()
    command = args.data_command
    progress = not getattr(args, "quiet", False)
    if command == "crawl":
        return _run_crawl(args, console, progress)
    if command == "prepare":
        options = _data_options(args, prep.PrepareConfig)
        options["progress"] = progress
        config = prep.PrepareConfig(inputs=list(args.inputs), **options)
        manifest = prep.prepare(config)
        console.print(prep.report_table(manifest["stages"], "keras-llm data"))
        _print_vocabulary(console, manifest["vocabulary"])
        for split, shards in manifest["shards"].items():
            console.print(
                f"{split}: {shards['documents']} documents, "
                f"{shards['tokens']} tokens in {len(shards['files'])} "
                f"shard(s) under {os.path.join(config.out, split)}"
            )
        console.print(f"manifest: {os.path.join(config.out, 'manifest.json')}")
        return 0
    if command == "vocab":
        return _run_vocab(args, console, progress)
    options = _data_options(args, prep.PrepareConfig)
    out = options.pop("out")
    config = prep.PrepareConfig(inputs=list(args.inputs), **options)
    result = prep.run_stages(
        list(args.inputs), out, (command,), config=config, progress=progress
    )
    console.print(
        prep.report_table(result["stages"], f"keras-llm data {command}")
    )
    console.print(f"{result['overall']['kept']} documents written to {out}")
    return 0


def _print_vocabulary(console, vocabulary):
    coverage = vocabulary.get("coverage") or {}
    where = "held-out" if coverage.get("held_out", True) else "training"
    details = ", ".join(
        f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
        for k, v in coverage.items()
        if k in ("documents", "unknown_rate", "tokens_per_word")
    )
    console.print(
        f"vocabulary: {vocabulary['kind']}, {vocabulary['vocabulary_size']} "
        f"tokens; coverage on {where} text: {details}"
    )


def _run_vocab(args, console, progress):
    from keras_llm.data import prepare as prep
    from keras_llm.data.warc import read_documents

    kind = vars(args).pop("kind", "bpe")
    options = _data_options(args, prep.PrepareConfig)
    config = prep.PrepareConfig(tokenizer=kind, **options)
    prep.check_inputs(list(args.inputs))
    from keras_llm.data.vocab import VOCABULARY_KINDS

    if kind not in VOCABULARY_KINDS:
        raise UserError(
            f"--kind must be one of {', '.join(VOCABULARY_KINDS)}, got {kind!r}"
        )
    report = prep.StageReport("read")
    texts = (d.text for d in read_documents(list(args.inputs), report))
    with (
        console.status("learning the vocabulary", spinner="dots")
        if (progress)
        else _nothing()
    ):
        result = prep.learn_vocabulary(
            texts,
            config.out,
            kind=kind,
            vocabulary_size=config.vocabulary_size,
            sample_documents=config.vocab_sample_documents,
            validation_fraction=config.validation_fraction,
            seed=config.seed,
        )
    console.print(prep.report_table([report], "keras-llm data vocab"))
    _print_vocabulary(console, result)
    console.print(f"tokenizer: {result['path']}")
    return 0


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _run_crawl(args, console, progress):
    from keras_llm.data.crawl import CrawlConfig
    from keras_llm.data.crawl import crawl
    from keras_llm.data.documents import StageReport
    from keras_llm.data.prepare import report_table

    options = {}
    if getattr(args, "config", None):
        options.update(_load_config_file(args.config))
    skip = ("command", "data_command", "config", "quiet", "seeds", "out")
    options.update({k: v for k, v in vars(args).items() if k not in skip})
    names = {f.name for f in dataclasses.fields(CrawlConfig)}
    unknown = sorted(set(options) - names)
    if unknown:
        raise UserError(f"unknown option(s) {', '.join(unknown)}")
    report = StageReport("crawl")
    result = crawl(
        list(args.seeds),
        args.out,
        CrawlConfig(**options),
        report=report,
        progress=progress,
    )
    console.print(report_table([report], "keras-llm data crawl"))
    console.print(
        f"{result['pages_fetched']} pages, {result['bytes']} bytes in "
        f"{result['warc_files']} WARC file(s) under {args.out}"
    )
    return 0


def _load_config_file(path):
    import yaml

    if not os.path.isfile(path):
        raise UserError(f"config file {path} does not exist")
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f) or {}
    except yaml.YAMLError as e:
        raise UserError(f"config file {path} is not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise UserError(f"config file {path} must hold a mapping of options")
    return {k.replace("-", "_"): v for k, v in data.items()}


def _config_options(args, config_cls):
    """Options of `config_cls` from `--config FILE` and the given flags
    (flags win), with `--quiet` as `verbose=2`."""
    options = {}
    if getattr(args, "config", None):
        options.update(_load_config_file(args.config))
    given = {
        k: v
        for k, v in vars(args).items()
        if k not in ("command", "config", "quiet")
    }
    options.update(given)
    if getattr(args, "quiet", False):
        options["verbose"] = 2
    names = {f.name for f in dataclasses.fields(config_cls)}
    unknown = sorted(set(options) - names)
    if unknown:
        raise UserError(f"unknown option(s) {', '.join(unknown)}")
    return options


def run_pretrain(args):
    from keras_llm.pretraining import PretrainConfig
    from keras_llm.pretraining import pretrain

    pretrain(PretrainConfig(**_config_options(args, PretrainConfig)))
    return 0


def run_tune(args):
    from keras_llm.tuning import TuneConfig
    from keras_llm.tuning import tune

    tune(TuneConfig(**_config_options(args, TuneConfig)))
    return 0


def run_finetune(args):
    from keras_llm.finetuning import FinetuneConfig
    from keras_llm.finetuning import finetune

    finetune(FinetuneConfig(**_config_options(args, FinetuneConfig)))
    return 0


def run_generate(args):
    if args.max_length <= 0:
        raise UserError(f"--max-length must be positive, got {args.max_length}")
    from keras_llm.generate import generate_text

    text = generate_text(
        args.model,
        args.prompt,
        max_length=args.max_length,
        sampler=args.sampler,
        tokenizer=args.tokenizer,
        seed=args.seed,
    )
    print(text)
    return 0


def build_parser():
    parser = argparse.ArgumentParser(
        prog="keras-llm",
        description="Train, fine-tune and run language models with Keras.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    _pretrain_parser(sub)
    _tune_parser(sub)
    _finetune_parser(sub)
    _generate_parser(sub)
    _data_parser(sub)
    for command in _COMPRESSION:
        _compression_parser(sub, command)
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    handlers = {
        "pretrain": run_pretrain,
        "tune": run_tune,
        "finetune": run_finetune,
        "generate": run_generate,
        "data": run_data,
        **{command: run_compression for command in _COMPRESSION},
    }
    try:
        return handlers[args.command](args)
    except UserError as e:
        print(f"keras-llm {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("keras-llm: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
