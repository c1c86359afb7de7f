"""Data: corpora, tokenizers, tf.data pipelines."""
