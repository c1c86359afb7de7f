"""Decoder-only causal language model (GPT) as a Keras functional model.

keras-hub's `GPT2Backbone` fixes GPT-2's architecture (learned positions,
GELU, biases, its own attention layer). This model is built from
`keras_llm.layers.TransformerBlock`, so attention, positions (learned or
rotary), the feed-forward variant and normalisation are arguments, and the
efficient attention layers plug in by name. Generation reuses keras-hub's
samplers with a key/value cache.
"""

import keras
import keras_hub
import numpy as np
from keras import ops

from keras_llm.checks import check_positive_int
from keras_llm.checks import check_rate
from keras_llm.layers.attention import get_attention
from keras_llm.layers.attention.convert import transfer_attention_weights
from keras_llm.layers.transformer_block import TransformerBlock
from keras_llm.models.dtypes import from_model_config
from keras_llm.models.dtypes import serialize_dtype
from keras_llm.models.dtypes import serialize_sublayers
from keras_llm.models.layout import LayoutMapMixin

_MODEL_ARGUMENTS = ("name", "trainable")


def _attention_options(attention, attention_kwargs, kwargs, heads, width):
    """Moves attention arguments given to the model into `attention_kwargs`
    and checks them by building one (unbuilt) attention layer."""
    extra = {k: kwargs.pop(k) for k in list(kwargs) if k not in
             _MODEL_ARGUMENTS}  # fmt: skip
    if not extra:
        return attention_kwargs
    if not isinstance(attention, str):
        raise TypeError(
            f"`GPT` got unexpected arguments {sorted(extra)}; attention "
            "arguments go with a registered attention name."
        )
    options = {**(attention_kwargs or {}), **extra}
    try:
        get_attention(
            attention, num_heads=heads, key_dim=width // heads, **options
        )
    except (TypeError, ValueError) as error:
        if isinstance(error, ValueError) and "Unrecognized keyword" not in (
            str(error)
        ):
            raise
        raise TypeError(
            f"`GPT` got arguments {sorted(extra)} that neither keras.Model "
            f"nor attention={attention!r} accepts: {error}"
        ) from None
    return options


def _as_str(text):
    """A detokenizer's output (str, bytes, or a scalar tensor) as `str`."""
    if not isinstance(text, (str, bytes)):
        text = np.asarray(text).item()
    return text.decode("utf-8", "replace") if isinstance(text, bytes) else text


@keras.saving.register_keras_serializable(package="keras_llm")
class GPT(LayoutMapMixin, keras.Model):
    """GPT-style decoder-only language model mapping token ids to logits.

    The model takes a `(batch, length)` int tensor of token ids and returns
    `(batch, length, vocabulary_size)` float32 next-token logits, so it trains
    with `model.fit(x=tokens, y=next_tokens)` and a sparse categorical
    cross-entropy `from_logits=True`.

    Args:
        vocabulary_size: int. Number of token ids.
        num_layers: int. Number of Transformer blocks.
        num_heads: int. Attention heads per block.
        hidden_dim: int. Width of the residual stream.
        intermediate_dim: int or `None`. Feed-forward hidden width; `None`
            means `4 * hidden_dim`. Defaults to `None`.
        max_sequence_length: int. Longest sequence (learned positions and
            generation). Defaults to `1024`.
        position_embedding: `"learned"` (keras-hub `PositionEmbedding`) or
            `"rotary"` (keras-hub `RotaryEmbedding` in each attention).
            Defaults to `"learned"`.
        activation: feed-forward activation, `"gelu"` or `"swiglu"`.
            Defaults to `"gelu"`.
        dropout: float. Dropout on embeddings and residual branches.
            Defaults to `0.0`.
        attention: attention of every block: a registered name, a layer
            config, or a layer whose config is copied into each block.
            Defaults to `"dense"`.
        attention_kwargs: dict of extra attention arguments. Defaults to
            `None`.
        num_key_value_heads: int or `None`. Grouped-query attention.
            Defaults to `None`.
        normalization: `"pre"` or `"post"` layer norm. Defaults to `"pre"`.
        layer_norm_epsilon: float. Defaults to `1e-5`.
        use_bias: bool. Biases in dense layers and layer norms. Defaults to
            `True`.
        tie_embeddings: bool. Share the input embedding with the output
            projection (Keras `ReversibleEmbedding`). Defaults to `True`.
        rotary_max_wavelength: int. Wavelength for rotary positions.
            Defaults to `10000`.
        remat: bool. Gradient checkpointing in every block (see
            `TransformerBlock`): the backward pass recomputes each block's
            activations instead of keeping them. Defaults to `False`.
        dtype: dtype policy of the layers, or `None` for the global policy.
            Defaults to `None`.
        **kwargs: `keras.Model` arguments (`name`, `trainable`); any other
            keyword is an argument of the named attention and is merged into
            `attention_kwargs`, so
            `GPT(..., attention="sliding_window", window=256)` works.

    Example:

    ```python
    import numpy as np
    import keras_llm

    model = keras_llm.models.GPT(
        vocabulary_size=50, num_layers=2, num_heads=2, hidden_dim=32,
        max_sequence_length=16,
    )
    logits = model(np.zeros((1, 8), "int32"))  # (1, 8, 50)
    tokens = model.generate([[1, 2, 3]], max_length=10, sampler="greedy")
    ```

    References:
        - [Radford et al., 2019, GPT-2](https://cdn.openai.com/better-language-models/language_models_are_unsupervised_multitask_learners.pdf)
    """

    def __init__(
        self,
        vocabulary_size,
        num_layers,
        num_heads,
        hidden_dim,
        intermediate_dim=None,
        max_sequence_length=1024,
        position_embedding="learned",
        activation="gelu",
        dropout=0.0,
        attention="dense",
        attention_kwargs=None,
        num_key_value_heads=None,
        normalization="pre",
        layer_norm_epsilon=1e-5,
        use_bias=True,
        tie_embeddings=True,
        rotary_max_wavelength=10000,
        remat=False,
        dtype=None,
        **kwargs,
    ):
        for arg in (
            "vocabulary_size",
            "num_layers",
            "num_heads",
            "hidden_dim",
            "max_sequence_length",
        ):
            check_positive_int("GPT", arg, locals()[arg])
        intermediate_dim = intermediate_dim or 4 * hidden_dim
        check_positive_int("GPT", "intermediate_dim", intermediate_dim)
        check_rate("GPT", "dropout", dropout)
        if hidden_dim % num_heads:
            raise ValueError(
                "`GPT` expects `hidden_dim` to be divisible by `num_heads`. "
                f"Received: hidden_dim={hidden_dim}, num_heads={num_heads}."
            )
        if position_embedding not in ("learned", "rotary"):
            raise ValueError(
                "`GPT` expects `position_embedding` to be 'learned' or "
                f"'rotary'. Received: {position_embedding!r}."
            )
        if isinstance(attention, keras.layers.Layer):
            # Every block needs its own attention: keep the config, not the
            # instance, so each block builds a copy.
            attention = keras.saving.serialize_keras_object(attention)
        attention_kwargs = _attention_options(
            attention, attention_kwargs, kwargs, num_heads, hidden_dim
        )
        init = keras.initializers.RandomNormal(stddev=0.02)

        # === Layers ===
        token_embedding = keras.layers.ReversibleEmbedding(
            vocabulary_size,
            hidden_dim,
            tie_weights=tie_embeddings,
            embeddings_initializer=init,
            dtype=dtype,
            name="token_embedding",
        )
        position_layer = None
        if position_embedding == "learned":
            position_layer = keras_hub.layers.PositionEmbedding(
                max_sequence_length,
                initializer=init,
                dtype=dtype,
                name="position_embedding",
            )
        embedding_dropout = keras.layers.Dropout(
            dropout, dtype=dtype, name="embedding_dropout"
        )
        blocks = [
            TransformerBlock(
                num_heads=num_heads,
                intermediate_dim=intermediate_dim,
                attention=attention,
                attention_kwargs=attention_kwargs,
                num_key_value_heads=num_key_value_heads,
                activation=activation,
                dropout=dropout,
                normalization=normalization,
                layer_norm_epsilon=layer_norm_epsilon,
                causal=True,
                rotary_max_wavelength=(
                    rotary_max_wavelength
                    if position_embedding == "rotary"
                    else None
                ),
                use_bias=use_bias,
                kernel_initializer=init,
                remat=remat,
                dtype=dtype,
                name=f"block_{i}",
            )
            for i in range(num_layers)
        ]
        final_norm = None
        if normalization == "pre":
            final_norm = keras.layers.LayerNormalization(
                epsilon=layer_norm_epsilon,
                center=use_bias,
                dtype=dtype,
                name="final_norm",
            )

        # === Functional graph ===
        token_ids = keras.Input(shape=(None,), dtype="int32", name="token_ids")
        x = token_embedding(token_ids)
        if position_layer is not None:
            x = x + position_layer(x)
        x = embedding_dropout(x)
        for block in blocks:
            x = block(x)
        if final_norm is not None:
            x = final_norm(x)
        logits = ops.cast(token_embedding(x, reverse=True), "float32")
        super().__init__(inputs=token_ids, outputs=logits, **kwargs)

        self.token_embedding = token_embedding
        self.position_embedding_layer = position_layer
        self.embedding_dropout = embedding_dropout
        self.blocks = blocks
        self.final_norm = final_norm

        # === Config ===
        self.vocabulary_size = vocabulary_size
        self.num_layers = num_layers
        self.num_heads = num_heads
        self.hidden_dim = hidden_dim
        self.intermediate_dim = intermediate_dim
        self.max_sequence_length = max_sequence_length
        self.position_embedding = position_embedding
        self.activation = activation
        self.dropout = dropout
        self.attention = attention
        self.attention_kwargs = attention_kwargs
        self.num_key_value_heads = num_key_value_heads
        self.normalization = normalization
        self.layer_norm_epsilon = layer_norm_epsilon
        self.use_bias = use_bias
        self.tie_embeddings = tie_embeddings
        self.rotary_max_wavelength = rotary_max_wavelength
        self.remat = remat
        self._layers_dtype = dtype
        self._generate_functions = {}
        self._named_samplers = {}

    @classmethod
    def from_preset(cls, preset, **overrides):
        """Builds a GPT of a named size from `keras_llm.models.presets`.

        Args:
            preset: a name such as `"nano"` or `"gpt2-small"`.
            **overrides: arguments that replace the preset's (for example
                `vocabulary_size`).
        """
        from keras_llm.models.presets import get_preset

        kwargs = get_preset(preset)
        kwargs.update(overrides)
        return cls(**kwargs)

    # --- Incremental decoding ---

    def call_with_cache(self, token_ids, cache, cache_update_index):
        """Forward pass over new tokens using and updating a key/value cache.

        Args:
            token_ids: `(B, T)` int tensor of the new tokens.
            cache: `(B, num_layers, 2, S_max, kv_heads, key_dim)` cache.
            cache_update_index: position of `token_ids[:, 0]`.

        Returns:
            `(logits, hidden_states, cache)`.
        """
        x = self.token_embedding(token_ids)
        if self.position_embedding_layer is not None:
            x = x + self.position_embedding_layer(
                x, start_index=cache_update_index
            )
        caches = []
        for i, block in enumerate(self.blocks):
            x, layer_cache = block(
                x, cache=cache[:, i], cache_update_index=cache_update_index
            )
            caches.append(layer_cache)
        cache = ops.stack(caches, axis=1)
        if self.final_norm is not None:
            x = self.final_norm(x)
        logits = ops.cast(self.token_embedding(x, reverse=True), "float32")
        return logits, x, cache

    def _empty_cache(self, batch_size, max_length):
        kv_heads = self.num_key_value_heads or self.num_heads
        shape = (
            batch_size,
            self.num_layers,
            2,
            max_length,
            kv_heads,
            self.hidden_dim // self.num_heads,
        )
        return ops.zeros(shape, dtype=self.compute_dtype)

    def _generate_ids(self, token_ids, mask, index, sampler, stop_token_ids):
        batch_size, max_length = ops.shape(token_ids)
        cache = self._empty_cache(batch_size, max_length)
        _, hidden_states, cache = self.call_with_cache(token_ids, cache, 0)

        def next(prompt, cache, index):
            cache_update_index = index - 1
            # Beam search grows the batch to batch * beams: read it here.
            rows = ops.shape(prompt)[0]
            prompt = ops.slice(prompt, [0, cache_update_index], [rows, 1])
            logits, hidden, cache = self.call_with_cache(
                prompt, cache, cache_update_index
            )
            return ops.squeeze(logits, axis=1), ops.squeeze(hidden, 1), cache

        return sampler(
            next=next,
            prompt=token_ids,
            cache=cache,
            index=index,
            mask=mask,
            stop_token_ids=stop_token_ids,
            hidden_states=hidden_states,
            model=self,
        )

    def generate(
        self,
        prompts,
        max_length,
        sampler="top_k",
        stop_token_ids=None,
        tokenizer=None,
        seed=None,
    ):
        """Continues prompts token by token with a keras-hub sampler.

        Each new token runs the model on one position against a key/value
        cache, so generating costs one position per token, not a full
        recompute.

        Args:
            prompts: token ids, as a list of lists (ragged is fine) or a
                `(B, P)` array; or strings when `tokenizer` is given.
            max_length: int. Total length of each output, prompt included.
            sampler: a keras-hub sampler or its name (`"greedy"`,
                `"top_k"`, `"top_p"`, `"random"`, `"beam"`). Defaults to
                `"top_k"`.
            stop_token_ids: token ids that end a sequence. Defaults to
                `None`.
            tokenizer: a tokenizer with `tokenize`/`detokenize`; when given,
                string prompts are accepted and strings returned. Defaults
                to `None`.
            seed: int or `None`. Seed of the sampler's randomness. Defaults
                to `None`.

        Returns:
            A `(B, max_length)` numpy array of token ids, or a list of
            strings when `tokenizer` is given.
        """
        single = isinstance(prompts, str)
        if single:
            prompts = [prompts]
        if tokenizer is not None:
            prompts = [
                np.asarray(tokenizer.tokenize(p)).reshape(-1).tolist()
                for p in prompts
            ]
        elif len(prompts) and isinstance(prompts[0], str):
            raise TypeError(
                "`GPT.generate` got string prompts but no `tokenizer`."
            )
        prompts = [list(np.asarray(p).reshape(-1)) for p in prompts]
        if not prompts or min(len(p) for p in prompts) == 0:
            raise ValueError(
                "`GPT.generate` needs at least one token in every prompt."
            )
        longest = max(len(p) for p in prompts)
        if not isinstance(max_length, int) or max_length <= longest:
            raise ValueError(
                "`GPT.generate` expects `max_length` to be an int longer "
                f"than the longest prompt ({longest}). Received: "
                f"{max_length!r}."
            )
        if (
            self.position_embedding == "learned"
            and max_length > self.max_sequence_length
        ):
            raise ValueError(
                f"`GPT.generate` max_length={max_length} exceeds the model's "
                f"max_sequence_length={self.max_sequence_length}."
            )
        token_ids = np.zeros((len(prompts), max_length), "int32")
        mask = np.zeros((len(prompts), max_length), bool)
        for i, p in enumerate(prompts):
            token_ids[i, : len(p)] = p
            mask[i, : len(p)] = True
        index = min(len(p) for p in prompts)

        if isinstance(sampler, str):
            # One sampler (and one traced function) per name, not per call.
            if sampler not in self._named_samplers:
                self._named_samplers[sampler] = keras_hub.samplers.get(sampler)
            sampler = self._named_samplers[sampler]
        generator = getattr(sampler, "seed_generator", None)
        if seed is not None and generator is not None:
            # Reset the state the traced function reads, so a seed gives the
            # same text on every call.
            generator.state.assign(
                np.array([seed, 0], dtype=generator.state.dtype)
            )
        fn = self._compiled_generate(sampler, stop_token_ids)
        out = fn(token_ids, mask, np.int32(index))
        out = np.asarray(keras.ops.convert_to_numpy(out))
        if tokenizer is None:
            return out
        texts = []
        for i in range(len(out)):
            row = out[i]
            if stop_token_ids:
                stops = np.where(np.isin(row[index:], stop_token_ids))[0]
                if len(stops):
                    row = row[: index + stops[0] + 1]
            texts.append(_as_str(tokenizer.detokenize(row)))
        return texts[0] if single else texts

    def _compiled_generate(self, sampler, stop_token_ids):
        key = (id(sampler), tuple(stop_token_ids or ()))
        if key in self._generate_functions:
            return self._generate_functions[key][1]

        def fn(token_ids, mask, index):
            return self._generate_ids(
                token_ids, mask, index, sampler, stop_token_ids
            )

        if keras.backend.backend() == "tensorflow":
            import tensorflow as tf

            fn = tf.function(fn, reduce_retracing=True)
        elif keras.backend.backend() == "jax":
            import jax

            fn = jax.jit(fn)
        # Keep the sampler alive so its id is not reused by another object.
        self._generate_functions[key] = (sampler, fn)
        return fn

    def get_config(self):
        return {
            "name": self.name,
            "trainable": self.trainable,
            "vocabulary_size": self.vocabulary_size,
            "num_layers": self.num_layers,
            "num_heads": self.num_heads,
            "hidden_dim": self.hidden_dim,
            "intermediate_dim": self.intermediate_dim,
            "max_sequence_length": self.max_sequence_length,
            "position_embedding": self.position_embedding,
            "activation": self.activation,
            "dropout": self.dropout,
            "attention": self.attention,
            "attention_kwargs": self.attention_kwargs,
            "num_key_value_heads": self.num_key_value_heads,
            "normalization": self.normalization,
            "layer_norm_epsilon": self.layer_norm_epsilon,
            "use_bias": self.use_bias,
            "tie_embeddings": self.tie_embeddings,
            "rotary_max_wavelength": self.rotary_max_wavelength,
            "remat": self.remat,
            "dtype": serialize_dtype(self, self._layers_dtype),
            **serialize_sublayers(self),
        }

    @classmethod
    def from_config(cls, config):
        return from_model_config(cls, config)

    def with_attention(self, attention, **attention_kwargs):
        """The same model with another attention in every block, same weights.

        A model trained with dense attention switches to an efficient one
        for longer inputs without retraining: all weights are copied, the
        attention projections converted between layouts where they differ
        (see `keras_llm.layers.attention.convert`).

        Args:
            attention: a registered attention name (or layer config).
            **attention_kwargs: its arguments, for example `window=512`.

        Returns:
            A new, built `GPT`.

        Example:

        ```python
        import keras_llm

        dense = keras_llm.models.GPT(
            vocabulary_size=50, num_layers=1, num_heads=2, hidden_dim=16,
            max_sequence_length=64,
        )
        local = dense.with_attention("sliding_window", window=16)
        ```
        """
        config = self.get_config()
        config["attention"] = attention
        config["attention_kwargs"] = attention_kwargs or None
        model = type(self).from_config(config)
        source = {w.path: w for w in self.weights}
        for weight in model.weights:
            if "/self_attention/" not in weight.path:
                weight.assign(source[weight.path])
        for old, new in zip(self.blocks, model.blocks):
            transfer_attention_weights(old.self_attention, new.self_attention)
        return model

    def num_parameters(self, exclude_embeddings=False):
        """Number of parameters; optionally without the embedding tables."""
        total = self.count_params()
        if exclude_embeddings:
            total -= int(np.prod(self.token_embedding.embeddings.shape))
            if self.position_embedding_layer is not None:
                total -= int(
                    np.prod(
                        self.position_embedding_layer.position_embeddings.shape
                    )
                )
        return total
