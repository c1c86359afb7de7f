"""The `keras-llm` command: thin subcommands over library functions.

`keras-llm pretrain` calls `keras_llm.pretrain(PretrainConfig)`, with one
flag per `PretrainConfig` field, and `keras-llm generate` calls
`keras_llm.generate_text`. `--config FILE` reads a YAML mapping of the same
options; flags given on the command line win over it.
"""

import argparse
import dataclasses
import os
import sys
import typing

from keras_llm.errors import UserError

_NOT_FLAGS = {"model_overrides", "verbose"}


def _flag(name):
    return "--" + name.replace("_", "-")


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
    docs = _attribute_docs(PretrainConfig)
    hints = typing.get_type_hints(PretrainConfig)
    for field in dataclasses.fields(PretrainConfig):
        if field.name in _NOT_FLAGS:
            continue
        default = (
            field.default_factory()
            if field.default_factory is not dataclasses.MISSING
            else field.default
        )
        kind = hints[field.name]
        help_text = f"{docs.get(field.name, '')} (default: {default!r})"
        if field.name == "corpus":
            p.add_argument(
                "--corpus", nargs="+", metavar="PATH", help=help_text
            )
        elif kind is bool:
            p.add_argument(
                _flag(field.name),
                action=argparse.BooleanOptionalAction,
                help=help_text,
            )
        else:
            convert = {int: int, float: float}.get(kind, str)
            p.add_argument(_flag(field.name), type=convert, help=help_text)
    p.add_argument(
        "--quiet", action="store_true", help="no per-step progress bar"
    )
    return p


def _attribute_docs(cls):
    """Maps each attribute to its line in the class docstring."""
    docs = {}
    in_attrs = False
    for line in (cls.__doc__ or "").splitlines():
        stripped = line.strip()
        if stripped == "Attributes:":
            in_attrs = True
            continue
        if in_attrs and ":" in stripped:
            name, text = stripped.split(":", 1)
            docs[name.strip()] = text.strip()
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


def run_pretrain(args):
    from keras_llm.pretraining import PretrainConfig
    from keras_llm.pretraining import pretrain

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
    names = {f.name for f in dataclasses.fields(PretrainConfig)}
    unknown = sorted(set(options) - names)
    if unknown:
        raise UserError(f"unknown option(s) {', '.join(unknown)}")
    pretrain(PretrainConfig(**options))
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
    _generate_parser(sub)
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    handlers = {"pretrain": run_pretrain, "generate": run_generate}
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
