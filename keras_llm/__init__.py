"""keras_llm: a Keras-first plugin suite for training language models.

Importing the package selects the TensorFlow backend unless the user already
chose one through ``KERAS_BACKEND``. The modelling parts (`layers`, `models`,
`callbacks`) use ``keras.ops`` only and import without TensorFlow, so they
also run on JAX; `data`, `pretrain`, `tune`, `finetune` and `generate_text` need TensorFlow and
are imported on first use.
"""

import importlib
import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from keras_llm import callbacks  # noqa: E402
from keras_llm import layers  # noqa: E402
from keras_llm import models  # noqa: E402
from keras_llm import optimizers  # noqa: E402
from keras_llm.version import __version__  # noqa: E402

_LAZY = {
    "data": ("keras_llm.data", None),
    "distribute": ("keras_llm.distribute", None),
    "PretrainConfig": ("keras_llm.pretraining", "PretrainConfig"),
    "pretrain": ("keras_llm.pretraining", "pretrain"),
    "generate_text": ("keras_llm.generate", "generate_text"),
    "tuning": ("keras_llm.tuning", None),
    "finetuning": ("keras_llm.finetuning", None),
    "FinetuneConfig": ("keras_llm.finetuning", "FinetuneConfig"),
    "finetune": ("keras_llm.finetuning", "finetune"),
    "TuneConfig": ("keras_llm.tuning", "TuneConfig"),
    "tune": ("keras_llm.tuning", "tune"),
}


def __getattr__(name):
    if name not in _LAZY:
        raise AttributeError(f"module 'keras_llm' has no attribute {name!r}")
    module_name, attribute = _LAZY[name]
    module = importlib.import_module(module_name)
    value = module if attribute is None else getattr(module, attribute)
    globals()[name] = value
    return value


__all__ = [
    "FinetuneConfig",
    "PretrainConfig",
    "TuneConfig",
    "__version__",
    "callbacks",
    "data",
    "distribute",
    "finetune",
    "finetuning",
    "generate_text",
    "layers",
    "models",
    "optimizers",
    "pretrain",
    "tune",
    "tuning",
]
