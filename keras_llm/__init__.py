"""keras_llm: a Keras-first plugin suite for training language models.

Importing the package selects the TensorFlow backend unless the user already
chose one through ``KERAS_BACKEND``; modelling layers use ``keras.ops`` only,
so they also run on JAX.
"""

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from keras_llm import callbacks  # noqa: E402
from keras_llm import data  # noqa: E402
from keras_llm import layers  # noqa: E402
from keras_llm import models  # noqa: E402
from keras_llm.generate import generate_text  # noqa: E402
from keras_llm.pretrain import PretrainConfig  # noqa: E402
from keras_llm.pretrain import pretrain  # noqa: E402
from keras_llm.version import __version__  # noqa: E402

__all__ = [
    "PretrainConfig",
    "__version__",
    "callbacks",
    "data",
    "generate_text",
    "layers",
    "models",
    "pretrain",
]
