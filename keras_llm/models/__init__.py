"""Language models built from keras_llm layers."""

from keras_llm.models import presets
from keras_llm.models.bert import BERT
from keras_llm.models.bert import BertPretrainer
from keras_llm.models.encoder_decoder import EncoderDecoder
from keras_llm.models.gpt import GPT

__all__ = ["BERT", "BertPretrainer", "EncoderDecoder", "GPT", "presets"]
