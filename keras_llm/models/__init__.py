"""Language models built from keras_llm layers."""

from keras_llm.models import presets
from keras_llm.models.gpt import GPT

__all__ = ["GPT", "presets"]
