"""Attention layers and the registry that `TransformerBlock(attention=...)` uses."""

from keras_llm.layers.attention.axial import AxialAttention
from keras_llm.layers.attention.base import BaseAttention
from keras_llm.layers.attention.block_sparse import BlockSparseAttention
from keras_llm.layers.attention.lsh import LSHAttention
from keras_llm.layers.attention.multi_head_attention import MultiHeadAttention
from keras_llm.layers.attention.registry import get_attention
from keras_llm.layers.attention.registry import register_attention
from keras_llm.layers.attention.registry import registered_attention_names
from keras_llm.layers.attention.sliding_window import SlidingWindowAttention

__all__ = [
    "AxialAttention",
    "BaseAttention",
    "BlockSparseAttention",
    "LSHAttention",
    "MultiHeadAttention",
    "get_attention",
    "register_attention",
    "SlidingWindowAttention",
    "registered_attention_names",
]
