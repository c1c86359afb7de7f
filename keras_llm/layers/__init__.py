"""Reusable Keras layers: Transformer blocks, feed-forward, attention."""

from keras_llm.layers import attention
from keras_llm.layers.feed_forward import FeedForward
from keras_llm.layers.transformer_block import TransformerBlock

__all__ = ["FeedForward", "TransformerBlock", "attention"]
