"""The `keras-llm` command: thin subcommands over library functions.

`keras-llm pretrain` calls `keras_llm.pretrain(PretrainConfig)`, with one
flag per `PretrainConfig` field, `keras-llm tune` calls
`keras_llm.tuning.tune(TuneConfig)` the same way, `keras-llm finetune`
calls `keras_llm.finetuning.finetune(FinetuneConfig)`, and `keras-llm
generate` calls `keras_llm.generate_text`. `--config FILE` reads a YAML
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


def add_config_flags(parser, config_cls):
    """Adds one flag per field of a config dataclass to `parser`.

    The help text of each flag is its line in the class docstring's
    `Attributes:`. Booleans get `--x/--no-x`, list fields (`list` or
    `list[int]`, `list[float]`) take one or more values, and fields in
    `_NOT_FLAGS` are left to `--config FILE`. Unset flags are absent from
    the parsed namespace when the parser has `argument_default=SUPPRESS`.
    """
    docs = _attribute_docs(config_cls)
    hints = typing.get_type_hints(config_cls)
    for field in dataclasses.fields(config_cls):
        if field.name in _NOT_FLAGS:
            continue
        default = (
            field.default_factory()
            if field.default_factory is not dataclasses.MISSING
            else field.default
        )
        kind = hints[field.name]
        help_text = f"{docs.get(field.name, '')} (default: {default!r})"
        flag = _flag(field.name)
        if kind is list or typing.get_origin(kind) is list:
            (item,) = typing.get_args(kind) or (str,)
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
            parser.add_argument(
                flag, type=_CONVERTERS.get(kind, str), help=help_text
            )


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
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    handlers = {
        "pretrain": run_pretrain,
        "tune": run_tune,
        "finetune": run_finetune,
        "generate": run_generate,
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
