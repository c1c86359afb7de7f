"""Data: corpora, tokenizers, vocabularies and `tf.data` pipelines."""

from keras_llm.data.character_tokenizer import CharacterTokenizer
from keras_llm.data.clean import CleanConfig
from keras_llm.data.clean import normalize_text
from keras_llm.data.clean import quality_issues
from keras_llm.data.corpus import CorpusError
from keras_llm.data.corpus import default_corpus
from keras_llm.data.corpus import read_corpus
from keras_llm.data.crawl import CrawlConfig
from keras_llm.data.crawl import normalize_url
from keras_llm.data.dedup import Deduplicator
from keras_llm.data.dedup import shingles
from keras_llm.data.documents import Document
from keras_llm.data.documents import StageReport
from keras_llm.data.extract import ENGINES
from keras_llm.data.mlm_nsp import learn_mlm_tokenizer
from keras_llm.data.mlm_nsp import mlm_nsp_dataset
from keras_llm.data.mlm_nsp import split_sentences
from keras_llm.data.pipelines import clm_dataset
from keras_llm.data.pipelines import split_tokens
from keras_llm.data.pipelines import tokenize_documents
from keras_llm.data.prepare import PrepareConfig
from keras_llm.data.shards import ShardWriter
from keras_llm.data.shards import read_shards
from keras_llm.data.shards import shard_dataset
from keras_llm.data.tasks import QAExample
from keras_llm.data.tasks import ReadReport
from keras_llm.data.tasks import TaskDataError
from keras_llm.data.tasks import classification_dataset
from keras_llm.data.tasks import decode_answers
from keras_llm.data.tasks import pair_dataset
from keras_llm.data.tasks import read_entailment
from keras_llm.data.tasks import read_sentiment
from keras_llm.data.tasks import read_squad
from keras_llm.data.tasks import squad_dataset
from keras_llm.data.tasks import squad_features
from keras_llm.data.tasks import squad_metrics
from keras_llm.data.vocab import VOCABULARY_KINDS
from keras_llm.data.vocab import learn_tokenizer
from keras_llm.data.vocab import load_tokenizer
from keras_llm.data.vocab import save_tokenizer
from keras_llm.data.vocab import vocabulary_coverage
from keras_llm.data.warc import read_documents

__all__ = [
    # Web text and raw files: the stage functions clean, crawl, dedup,
    # extract and prepare are in their modules (keras_llm.data.clean.clean).
    "CleanConfig",
    "CrawlConfig",
    "Deduplicator",
    "Document",
    "ENGINES",
    "StageReport",
    "normalize_text",
    "normalize_url",
    "quality_issues",
    "read_documents",
    "shingles",
    "PrepareConfig",
    "ShardWriter",
    "VOCABULARY_KINDS",
    "read_shards",
    "shard_dataset",
    "vocabulary_coverage",
    # Supervised tasks (keras_llm.data.tasks).
    "QAExample",
    "ReadReport",
    "TaskDataError",
    "classification_dataset",
    "decode_answers",
    "pair_dataset",
    "read_entailment",
    "read_sentiment",
    "read_squad",
    "squad_dataset",
    "squad_features",
    "squad_metrics",
    "CharacterTokenizer",
    "CorpusError",
    "clm_dataset",
    "default_corpus",
    "learn_mlm_tokenizer",
    "learn_tokenizer",
    "load_tokenizer",
    "mlm_nsp_dataset",
    "read_corpus",
    "save_tokenizer",
    "split_sentences",
    "split_tokens",
    "tokenize_documents",
]
