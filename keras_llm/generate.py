"""Generating text from a saved run: `keras-llm generate` as a function."""

import os
import zipfile

import keras

from keras_llm.data.vocab import TOKENIZER_FILE
from keras_llm.data.vocab import load_tokenizer
from keras_llm.errors import UserError
from keras_llm.models.gpt import GPT


def load_gpt(path):
    """Loads a `.keras` file and checks that it holds a keras_llm `GPT`.

    Raises:
        UserError: if the file is missing, is not a Keras archive, or holds
            another kind of model.
    """
    if not os.path.isfile(path):
        raise UserError(f"model file {path} does not exist")
    if not zipfile.is_zipfile(path):
        raise UserError(
            f"{path} is not a .keras model file; pass the model.keras that "
            "`keras-llm pretrain` wrote"
        )
    try:
        model = keras.saving.load_model(path)
    except Exception as e:  # noqa: BLE001 - any load failure is a bad file
        raise UserError(
            f"{path} could not be loaded as a keras_llm model "
            f"({type(e).__name__}: {str(e).splitlines()[0][:200]})"
        ) from e
    if not isinstance(model, GPT):
        raise UserError(
            f"{path} holds a {type(model).__name__}, not a keras_llm GPT"
        )
    return model


def generate_text(
    model,
    prompt,
    max_length=200,
    sampler="top_k",
    tokenizer=None,
    seed=None,
):
    """Continues `prompt` with a saved or in-memory GPT.

    Args:
        model: a `GPT`, or the path of a `.keras` file written by
            `keras-llm pretrain`.
        prompt: str, or a list of strings.
        max_length: int. Tokens in the output, prompt included. Defaults to
            `200`.
        sampler: keras-hub sampler or name. Defaults to `"top_k"`.
        tokenizer: a tokenizer, a path to `tokenizer.json`, or `None` to use
            the `tokenizer.json` beside the model file. Defaults to `None`.
        seed: int or `None`. Defaults to `None`.

    Returns:
        The generated string, or a list of strings.

    Example:

    ```python
    import keras_llm

    run = keras_llm.pretrain(
        steps=20, warmup_steps=5, eval_interval=10, sequence_length=64,
        batch_size=8, out="runs/example", verbose=0,
    )
    text = keras_llm.generate_text(run["paths"]["model"], "Python ")
    ```
    """
    if isinstance(model, (str, os.PathLike)):
        model_path = os.fspath(model)
        model = load_gpt(model_path)
        if tokenizer is None:
            tokenizer = os.path.join(
                os.path.dirname(os.path.abspath(model_path)), TOKENIZER_FILE
            )
    if tokenizer is None:
        raise UserError(
            "generate_text needs a tokenizer for an in-memory model"
        )
    if isinstance(tokenizer, (str, os.PathLike)):
        tokenizer = load_tokenizer(os.fspath(tokenizer))
    if not prompt:
        raise UserError("the prompt is empty; give at least one character")
    limit = model.max_sequence_length
    if model.position_embedding == "learned" and max_length > limit:
        raise UserError(
            f"--max-length {max_length} exceeds the model's "
            f"max_sequence_length of {limit}"
        )
    prompt_length = len(keras.ops.convert_to_numpy(tokenizer.tokenize(prompt)))
    if prompt_length >= max_length:
        raise UserError(
            f"the prompt is {prompt_length} tokens long; --max-length "
            f"({max_length}) must be longer"
        )
    try:
        return model.generate(
            prompt,
            max_length=max_length,
            sampler=sampler,
            tokenizer=tokenizer,
            seed=seed,
        )
    except ValueError as e:
        if "Unknown sampler" in str(e) or "Could not interpret" in str(e):
            raise UserError(f"unknown --sampler {sampler!r}") from e
        raise
