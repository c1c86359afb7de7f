"""Supervised tasks: readers and `tf.data` pipelines for fine-tuning.

- Readers (`read_sentiment`, `read_entailment`, `read_squad`) return the
  examples they kept and a `ReadReport` listing every skipped row with its
  line and reason.
- Pipelines (`classification_dataset`, `pair_dataset`, `squad_features` +
  `squad_dataset`) give the `{"token_ids", "segment_ids", "padding_mask"}`
  features of a BERT-style encoder, packed with keras-hub's
  `MultiSegmentPacker`.
- `decode_answers` and `squad_metrics` turn span predictions back into text
  and score them (SQuAD v1.1 exact match and F1).
"""

from keras_llm.data.tasks.classification import SPECIAL_TOKENS
from keras_llm.data.tasks.classification import classification_dataset
from keras_llm.data.tasks.classification import pair_dataset
from keras_llm.data.tasks.classification import special_token_ids
from keras_llm.data.tasks.offsets import OffsetWordPiece
from keras_llm.data.tasks.offsets import tokenize_with_offsets
from keras_llm.data.tasks.readers import ENTAILMENT_LABELS
from keras_llm.data.tasks.readers import QAExample
from keras_llm.data.tasks.readers import TextClassificationData
from keras_llm.data.tasks.readers import TextPairData
from keras_llm.data.tasks.readers import read_entailment
from keras_llm.data.tasks.readers import read_sentiment
from keras_llm.data.tasks.readers import read_squad
from keras_llm.data.tasks.report import ReadReport
from keras_llm.data.tasks.report import TaskDataError
from keras_llm.data.tasks.squad import decode_answers
from keras_llm.data.tasks.squad import normalize_answer
from keras_llm.data.tasks.squad import squad_dataset
from keras_llm.data.tasks.squad import squad_features
from keras_llm.data.tasks.squad import squad_metrics

__all__ = [
    "ENTAILMENT_LABELS",
    "OffsetWordPiece",
    "QAExample",
    "ReadReport",
    "SPECIAL_TOKENS",
    "TaskDataError",
    "TextClassificationData",
    "TextPairData",
    "classification_dataset",
    "decode_answers",
    "normalize_answer",
    "pair_dataset",
    "read_entailment",
    "read_sentiment",
    "read_squad",
    "special_token_ids",
    "squad_dataset",
    "squad_features",
    "squad_metrics",
    "tokenize_with_offsets",
]
