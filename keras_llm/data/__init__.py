"""Data: corpora, tokenizers, vocabularies and `tf.data` pipelines."""

from keras_llm.data.character_tokenizer import CharacterTokenizer
from keras_llm.data.corpus import CorpusError
from keras_llm.data.corpus import default_corpus
from keras_llm.data.corpus import read_corpus
from keras_llm.data.pipelines import clm_dataset
from keras_llm.data.pipelines import split_tokens
from keras_llm.data.pipelines import tokenize_documents
from keras_llm.data.vocab import learn_tokenizer
from keras_llm.data.vocab import load_tokenizer
from keras_llm.data.vocab import save_tokenizer

__all__ = [
    "CharacterTokenizer",
    "CorpusError",
    "clm_dataset",
    "default_corpus",
    "learn_tokenizer",
    "load_tokenizer",
    "read_corpus",
    "save_tokenizer",
    "split_tokens",
    "tokenize_documents",
]
