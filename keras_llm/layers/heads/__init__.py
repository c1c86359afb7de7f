"""Task heads on an encoder's (or decoder's) sequence output: next-sentence
prediction, sequence and pair classification, span QA, causal LM.

Every head takes the `(B, T, hidden)` sequence output, pools it itself where
it needs one vector per example, and returns float32 logits whatever the
dtype policy.
"""

from keras_llm.layers.heads.causal_lm_head import CausalLMHead
from keras_llm.layers.heads.next_sentence_head import NextSentenceHead
from keras_llm.layers.heads.pair_classification_head import (
    PairClassificationHead,
)
from keras_llm.layers.heads.sequence_classification_head import (
    SequenceClassificationHead,
)
from keras_llm.layers.heads.span_qa_head import SpanQAHead
from keras_llm.layers.heads.span_qa_head import best_spans

__all__ = [
    "CausalLMHead",
    "NextSentenceHead",
    "PairClassificationHead",
    "SequenceClassificationHead",
    "SpanQAHead",
    "best_spans",
]
