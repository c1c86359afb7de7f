"""Causal language-model head: next-token logits, optionally tied.

The output projection of a decoder, as its own layer so any backbone can
use it: an untied `Dense(vocabulary_size)`, or the token embedding matrix
transposed (weight tying, as GPT-2 and most decoders do), through
`ReversibleEmbedding(..., reverse=True)` when the embedding supports it.
"""

import inspect

import keras
from keras import ops

from keras_llm.checks import check_positive_int
from keras_llm.layers.attention.multi_head_attention import clone_initializer


def _is_reversible(embedding):
    return "reverse" in inspect.signature(type(embedding).call).parameters


@keras.saving.register_keras_serializable(package="keras_llm")
class CausalLMHead(keras.layers.Layer):
    """Projects hidden states to float32 vocabulary logits.

    Without `token_embedding` the head owns a `Dense(vocabulary_size)`
    kernel. With `token_embedding` it ties weights: the logits are the
    hidden states times the embedding matrix transposed (a keras or
    keras-hub `ReversibleEmbedding` is called with `reverse=True`, which
    also honours its `tie_weights`, `reverse_dtype` and `logit_soft_cap`; a
    plain `keras.layers.Embedding` is multiplied by its transposed
    `embeddings`). Logits are computed in the dtype policy and cast to
    float32.

    Weight tying needs the same embedding layer object in the model and in
    the head, which no config can express: a tied head's `get_config()`
    stores the embedding's config (as keras-hub's `MaskedLMHead` does), so
    `from_config` gives a head with its own, fresh embedding, no longer
    tied to anything. A model with a tied head must therefore create the
    head in its own constructor, passing its embedding layer (a subclassed
    model whose `get_config` holds its arguments, not its layers); then
    saving and loading the model keeps the tie. An untied head
    round-trips through `get_config`/`from_config` on its own.

    Args:
        vocabulary_size: int. Number of tokens.
        token_embedding: a `keras.layers.Embedding` (or a subclass such as
            keras' or keras-hub's `ReversibleEmbedding`) with
            `input_dim == vocabulary_size` and `output_dim` equal to the
            hidden size, whose matrix the head reuses; `None` for an untied
            head. Defaults to `None`.
        use_bias: bool. Add a `(vocabulary_size,)` output bias (the head's
            own variable, also when tied). Defaults to `False`.
        kernel_initializer: initializer of the untied kernel. Defaults to
            `"glorot_uniform"`.
        **kwargs: standard `keras.layers.Layer` arguments.

    Call arguments:
        hidden_states: `(B, T, hidden)` (or `(B, hidden)`) decoder output.

    Returns:
        `(B, T, vocabulary_size)` (or `(B, vocabulary_size)`) float32
        logits.

    Example:

    ```python
    import keras
    import numpy as np
    import keras_llm

    embedding = keras.layers.ReversibleEmbedding(100, 16)
    head = keras_llm.layers.heads.CausalLMHead(100, token_embedding=embedding)
    token_ids = np.array([[1, 2, 3]])
    logits = head(embedding(token_ids))  # (1, 3, 100), float32, tied

    untied = keras_llm.layers.heads.CausalLMHead(100, use_bias=True)
    logits = untied(np.random.rand(1, 3, 16).astype("float32"))
    ```

    References:
        - [Press and Wolf, 2017, Using the Output Embedding to Improve
          Language Models](https://arxiv.org/abs/1608.05859)
    """

    def __init__(
        self,
        vocabulary_size,
        token_embedding=None,
        use_bias=False,
        kernel_initializer="glorot_uniform",
        **kwargs,
    ):
        super().__init__(**kwargs)
        owner = "CausalLMHead"
        check_positive_int(owner, "vocabulary_size", vocabulary_size)
        if token_embedding is not None:
            if not isinstance(token_embedding, keras.layers.Embedding):
                raise TypeError(
                    f"`{owner}` expects `token_embedding` to be a "
                    "`keras.layers.Embedding` (or a `ReversibleEmbedding`) "
                    f"or None. Received: {token_embedding!r}."
                )
            if token_embedding.input_dim != vocabulary_size:
                raise ValueError(
                    f"`{owner}` expects `token_embedding.input_dim` to equal "
                    f"`vocabulary_size`. Received: input_dim="
                    f"{token_embedding.input_dim}, vocabulary_size="
                    f"{vocabulary_size}."
                )
        self.vocabulary_size = vocabulary_size
        self.token_embedding = token_embedding
        self.use_bias = bool(use_bias)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)

    def build(self, hidden_states_shape):
        if len(hidden_states_shape) < 2 or hidden_states_shape[-1] is None:
            raise ValueError(
                "`CausalLMHead` expects hidden states of shape (batch, "
                "length, hidden) or (batch, hidden) with a known hidden "
                f"size. Received shape {tuple(hidden_states_shape)}."
            )
        hidden_dim = hidden_states_shape[-1]
        if self.token_embedding is None:
            self.logits_dense = keras.layers.Dense(
                self.vocabulary_size,
                use_bias=self.use_bias,
                kernel_initializer=clone_initializer(self.kernel_initializer),
                dtype=self.dtype_policy,
                name="logits_dense",
            )
            self.logits_dense.build(hidden_states_shape)
        else:
            if self.token_embedding.output_dim != hidden_dim:
                raise ValueError(
                    "`CausalLMHead` expects the hidden size to equal "
                    "`token_embedding.output_dim`. Received hidden size "
                    f"{hidden_dim}, output_dim="
                    f"{self.token_embedding.output_dim}."
                )
            if not self.token_embedding.built:
                self.token_embedding.build()
            if self.use_bias:
                self.bias = self.add_weight(
                    shape=(self.vocabulary_size,),
                    initializer="zeros",
                    name="bias",
                )
        self.built = True

    def call(self, hidden_states):
        if self.token_embedding is None:
            logits = self.logits_dense(hidden_states)
        else:
            if _is_reversible(self.token_embedding):
                logits = self.token_embedding(hidden_states, reverse=True)
            else:
                kernel = ops.cast(
                    self.token_embedding.embeddings, self.compute_dtype
                )
                logits = ops.matmul(hidden_states, ops.transpose(kernel))
            if self.use_bias:
                logits = ops.cast(logits, self.compute_dtype) + ops.cast(
                    self.bias, self.compute_dtype
                )
        return ops.cast(logits, "float32")

    def compute_output_shape(self, hidden_states_shape):
        return tuple(hidden_states_shape[:-1]) + (self.vocabulary_size,)

    def get_config(self):
        config = super().get_config()
        embedding = None
        if self.token_embedding is not None:
            embedding = keras.layers.serialize(self.token_embedding)
        config.update(
            {
                "vocabulary_size": self.vocabulary_size,
                "token_embedding": embedding,
                "use_bias": self.use_bias,
                "kernel_initializer": keras.initializers.serialize(
                    self.kernel_initializer
                ),
            }
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        embedding = config.get("token_embedding")
        if isinstance(embedding, dict):
            config["token_embedding"] = keras.layers.deserialize(embedding)
        return super().from_config(config)
