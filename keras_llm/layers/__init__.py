"""Reusable Keras layers: Transformer blocks, reversible stacks, feed-forward,
attention."""

from keras_llm.layers import attention
from keras_llm.layers import heads
from keras_llm.layers.feed_forward import FeedForward
from keras_llm.layers.reversible import ReversibleBlock
from keras_llm.layers.reversible import ReversibleStack
from keras_llm.layers.transformer_block import TransformerBlock

__all__ = [
    "FeedForward",
    "ReversibleBlock",
    "ReversibleStack",
    "TransformerBlock",
    "attention",
    "heads",
]
