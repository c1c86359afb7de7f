"""Encoder-decoder Transformer (sequence to sequence) as a Keras model.

The architecture of "Attention is All You Need": a stack of bidirectional
`TransformerBlock`s encodes the source, a stack of causal blocks with
cross-attention (`TransformerBlock(causal=True, cross_attention=True)`)
decodes the target. Training is teacher-forced in `model.fit` (the decoder
reads the target shifted right and predicts every next token at once);
`generate` encodes the source once and decodes token by token with a
keras-hub sampler and a key/value cache of the decoder's self-attention.
"""

import keras
import keras_hub
import numpy as np
from keras import ops

from keras_llm.checks import check_positive_int
from keras_llm.checks import check_rate
from keras_llm.layers.transformer_block import TransformerBlock
from keras_llm.models.dtypes import from_model_config
from keras_llm.models.dtypes import serialize_dtype
from keras_llm.models.dtypes import serialize_sublayers
from keras_llm.models.layout import LayoutMapMixin

_INPUT_NAMES = (
    "encoder_token_ids",
    "encoder_padding_mask",
    "decoder_token_ids",
    "decoder_padding_mask",
)


def _embed(token_embedding, position_layer, dropout, token_ids, start=0):
    """Token embedding, plus learned positions when there are any."""
    x = token_embedding(token_ids)
    if position_layer is not None:
        x = x + position_layer(x, start_index=start)
    return dropout(x)


def _encode(layers, token_ids, padding_mask):
    """Runs the encoder: `layers` = (embedding, positions, dropout, blocks,
    final norm)."""
    embedding, positions, dropout, blocks, final_norm = layers
    x = _embed(embedding, positions, dropout, token_ids)
    for block in blocks:
        x = block(x, padding_mask=padding_mask)
    if final_norm is not None:
        x = final_norm(x)
    return x


def _pad_rows(rows, pad_value, owner, what):
    """Pads a list of 1-D id sequences into a `(B, L)` int32 array."""
    rows = [np.asarray(r).reshape(-1) for r in rows]
    if not rows or min(len(r) for r in rows) == 0:
        raise ValueError(f"`{owner}` needs at least one token in every {what}.")
    out = np.full((len(rows), max(len(r) for r in rows)), pad_value, "int32")
    mask = np.zeros(out.shape, bool)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
        mask[i, : len(r)] = True
    return out, mask


@keras.saving.register_keras_serializable(package="keras_llm")
class EncoderDecoder(LayoutMapMixin, keras.Model):
    """Encoder-decoder Transformer mapping source and target ids to logits.

    The model takes a dict of `(batch, length)` int tensors:

    - `"encoder_token_ids"`: the source;
    - `"encoder_padding_mask"` (optional): valid source positions; when
      missing, every id other than `pad_token_id` is valid;
    - `"decoder_token_ids"`: the target shifted right (it starts with a
      start token);
    - `"decoder_padding_mask"` (optional): valid target positions, used as a
      key mask in the decoder's self-attention. When missing no mask is
      applied: the causal mask already keeps right-padded target positions
      from reaching earlier ones (leave padded positions out of the loss with
      `sample_weight` or `ignore_class`).

    It returns `(batch, target_length, target_vocabulary_size)` float32
    next-token logits, so it trains with `model.fit(x=inputs, y=targets)`
    and a sparse categorical cross-entropy `from_logits=True`.

    With `tie_embeddings=True` the decoder's input embedding is also its
    output projection (Keras `ReversibleEmbedding`), and when source and
    target share one vocabulary (`target_vocabulary_size` is `None` or equal
    to `vocabulary_size`) the encoder reads the same table: one matrix in
    all. With `tie_embeddings=False` the encoder embedding, the decoder
    embedding and the output projection are three matrices.

    Args:
        vocabulary_size: int. Number of source token ids (and target ids
            unless `target_vocabulary_size` is set).
        num_encoder_layers: int. Number of encoder blocks.
        num_decoder_layers: int. Number of decoder blocks.
        num_heads: int. Attention heads per attention layer.
        hidden_dim: int. Width of the residual stream.
        intermediate_dim: int or `None`. Feed-forward hidden width; `None`
            means `4 * hidden_dim`. Defaults to `None`.
        max_sequence_length: int. Longest source (learned positions).
            Defaults to `512`.
        max_target_length: int or `None`. Longest target, start token
            included (learned positions and `generate`); `None` means
            `max_sequence_length`. Defaults to `None`.
        target_vocabulary_size: int or `None`. Number of target token ids
            when the target has its own vocabulary; `None` means
            `vocabulary_size`. Defaults to `None`.
        position_embedding: `"learned"` (keras-hub `PositionEmbedding`, one
            table for each side) or `"rotary"` (keras-hub `RotaryEmbedding`
            in every self-attention; cross-attention is position-free).
            Defaults to `"learned"`.
        activation: feed-forward activation, `"gelu"`, `"relu"` or
            `"swiglu"`. Defaults to `"gelu"`.
        dropout: float. Dropout on embeddings and residual branches.
            Defaults to `0.0`.
        num_key_value_heads: int or `None`. Grouped-query attention.
            Defaults to `None`.
        normalization: `"pre"` or `"post"` (the original Transformer) layer
            norm. Defaults to `"pre"`.
        layer_norm_epsilon: float. Defaults to `1e-5`.
        use_bias: bool. Biases in dense layers and layer norms. Defaults to
            `True`.
        tie_embeddings: bool. Share embeddings as described above. Defaults
            to `True`.
        rotary_max_wavelength: int. Wavelength of rotary positions.
            Defaults to `10000`.
        pad_token_id: int. Source id treated as padding when no
            `encoder_padding_mask` is given, and the filler `generate` writes
            after an end token. Defaults to `0`.
        remat: bool. Gradient checkpointing in every block (see
            `TransformerBlock`). Defaults to `False`.
        dtype: dtype policy of the layers, or `None` for the global policy.
            Defaults to `None`.
        **kwargs: `keras.Model` arguments (`name`, `trainable`).

    Example:

    ```python
    import keras
    import numpy as np
    import keras_llm

    model = keras_llm.models.EncoderDecoder(
        vocabulary_size=12, num_encoder_layers=1, num_decoder_layers=1,
        num_heads=2, hidden_dim=16, max_sequence_length=8,
    )
    source = np.array([[3, 4, 5, 0], [6, 7, 0, 0]])  # 0 pads
    target = np.array([[1, 5, 4, 3, 2], [1, 7, 6, 2, 0]])  # start 1, end 2
    inputs = {"encoder_token_ids": source, "decoder_token_ids": target[:, :-1]}
    logits = model(inputs)  # (2, 4, 12)
    model.compile(
        optimizer="adam",
        loss=keras.losses.SparseCategoricalCrossentropy(
            from_logits=True, ignore_class=0
        ),
    )
    model.fit(inputs, target[:, 1:], epochs=1, verbose=0)
    out = model.generate(
        [[3, 4, 5], [6, 7]], max_length=6, start_token_id=1, end_token_id=2
    )  # (2, 6), starting with the start token
    ```

    References:
        - [Vaswani et al., 2017, Attention Is All You Need](https://arxiv.org/abs/1706.03762)
    """

    def __init__(
        self,
        vocabulary_size,
        num_encoder_layers,
        num_decoder_layers,
        num_heads,
        hidden_dim,
        intermediate_dim=None,
        max_sequence_length=512,
        max_target_length=None,
        target_vocabulary_size=None,
        position_embedding="learned",
        activation="gelu",
        dropout=0.0,
        num_key_value_heads=None,
        normalization="pre",
        layer_norm_epsilon=1e-5,
        use_bias=True,
        tie_embeddings=True,
        rotary_max_wavelength=10000,
        pad_token_id=0,
        remat=False,
        dtype=None,
        **kwargs,
    ):
        owner = "EncoderDecoder"
        for arg in (
            "vocabulary_size",
            "num_encoder_layers",
            "num_decoder_layers",
            "num_heads",
            "hidden_dim",
            "max_sequence_length",
        ):
            check_positive_int(owner, arg, locals()[arg])
        for arg in ("max_target_length", "target_vocabulary_size"):
            check_positive_int(owner, arg, locals()[arg], allow_none=True)
        intermediate_dim = intermediate_dim or 4 * hidden_dim
        check_positive_int(owner, "intermediate_dim", intermediate_dim)
        check_rate(owner, "dropout", dropout)
        if hidden_dim % num_heads:
            raise ValueError(
                f"`{owner}` expects `hidden_dim` to be divisible by "
                f"`num_heads`. Received: hidden_dim={hidden_dim}, "
                f"num_heads={num_heads}."
            )
        if position_embedding not in ("learned", "rotary"):
            raise ValueError(
                f"`{owner}` expects `position_embedding` to be 'learned' or "
                f"'rotary'. Received: {position_embedding!r}."
            )
        if normalization not in ("pre", "post"):
            raise ValueError(
                f"`{owner}` expects `normalization` to be 'pre' or 'post'. "
                f"Received: {normalization!r}."
            )
        if (
            isinstance(pad_token_id, bool)
            or not isinstance(pad_token_id, int)
            or not 0 <= pad_token_id < vocabulary_size
        ):
            raise ValueError(
                f"`{owner}` expects `pad_token_id` to be an id below "
                f"vocabulary_size={vocabulary_size}. Received: "
                f"{pad_token_id!r}."
            )
        max_target_length = max_target_length or max_sequence_length
        target_vocabulary = target_vocabulary_size or vocabulary_size
        shared = tie_embeddings and target_vocabulary == vocabulary_size
        init = keras.initializers.RandomNormal(stddev=0.02)

        # === Layers ===
        decoder_embedding = keras.layers.ReversibleEmbedding(
            target_vocabulary,
            hidden_dim,
            tie_weights=tie_embeddings,
            embeddings_initializer=init,
            dtype=dtype,
            name="token_embedding" if shared else "decoder_token_embedding",
        )
        encoder_embedding = None
        if not shared:
            encoder_embedding = keras.layers.Embedding(
                vocabulary_size,
                hidden_dim,
                embeddings_initializer=init,
                dtype=dtype,
                name="encoder_token_embedding",
            )
        encoder_positions = decoder_positions = None
        if position_embedding == "learned":
            encoder_positions = keras_hub.layers.PositionEmbedding(
                max_sequence_length,
                initializer=init,
                dtype=dtype,
                name="encoder_position_embedding",
            )
            decoder_positions = keras_hub.layers.PositionEmbedding(
                max_target_length,
                initializer=init,
                dtype=dtype,
                name="decoder_position_embedding",
            )
        encoder_dropout = keras.layers.Dropout(
            dropout, dtype=dtype, name="encoder_embedding_dropout"
        )
        decoder_dropout = keras.layers.Dropout(
            dropout, dtype=dtype, name="decoder_embedding_dropout"
        )

        def block(i, decoder):
            return TransformerBlock(
                num_heads=num_heads,
                intermediate_dim=intermediate_dim,
                num_key_value_heads=num_key_value_heads,
                activation=activation,
                dropout=dropout,
                normalization=normalization,
                layer_norm_epsilon=layer_norm_epsilon,
                causal=decoder,
                cross_attention=decoder,
                rotary_max_wavelength=(
                    rotary_max_wavelength
                    if position_embedding == "rotary"
                    else None
                ),
                use_bias=use_bias,
                kernel_initializer=init,
                remat=remat,
                dtype=dtype,
                name=f"{'decoder' if decoder else 'encoder'}_block_{i}",
            )

        encoder_blocks = [block(i, False) for i in range(num_encoder_layers)]
        decoder_blocks = [block(i, True) for i in range(num_decoder_layers)]
        encoder_norm = decoder_norm = None
        if normalization == "pre":
            encoder_norm, decoder_norm = (
                keras.layers.LayerNormalization(
                    epsilon=layer_norm_epsilon,
                    center=use_bias,
                    dtype=dtype,
                    name=f"{side}_final_norm",
                )
                for side in ("encoder", "decoder")
            )

        # === Functional graph ===
        inputs = {
            name: keras.Input(shape=(None,), dtype="int32", name=name)
            for name in _INPUT_NAMES
        }
        encoder_outputs = _encode(
            (
                decoder_embedding
                if encoder_embedding is None
                else encoder_embedding,
                encoder_positions,
                encoder_dropout,
                encoder_blocks,
                encoder_norm,
            ),
            inputs["encoder_token_ids"],
            inputs["encoder_padding_mask"],
        )
        x = _embed(
            decoder_embedding,
            decoder_positions,
            decoder_dropout,
            inputs["decoder_token_ids"],
        )
        for decoder_block in decoder_blocks:
            x = decoder_block(
                x,
                encoder_outputs,
                padding_mask=inputs["decoder_padding_mask"],
                encoder_padding_mask=inputs["encoder_padding_mask"],
            )
        if decoder_norm is not None:
            x = decoder_norm(x)
        logits = ops.cast(decoder_embedding(x, reverse=True), "float32")
        super().__init__(inputs=inputs, outputs=logits, **kwargs)
        # The padding masks may be left out of the input dict; `call` fills
        # them in, so the functional input check must not demand them.
        self.input_spec = None

        self.decoder_token_embedding = decoder_embedding
        self.encoder_token_embedding = encoder_embedding
        self.encoder_position_embedding = encoder_positions
        self.decoder_position_embedding = decoder_positions
        self.encoder_embedding_dropout = encoder_dropout
        self.decoder_embedding_dropout = decoder_dropout
        self.encoder_blocks = encoder_blocks
        self.decoder_blocks = decoder_blocks
        self.encoder_final_norm = encoder_norm
        self.decoder_final_norm = decoder_norm

        # === Config ===
        self.vocabulary_size = vocabulary_size
        self.num_encoder_layers = num_encoder_layers
        self.num_decoder_layers = num_decoder_layers
        self.num_heads = num_heads
        self.hidden_dim = hidden_dim
        self.intermediate_dim = intermediate_dim
        self.max_sequence_length = max_sequence_length
        self.max_target_length = max_target_length
        self.target_vocabulary_size = target_vocabulary_size
        self.position_embedding = position_embedding
        self.activation = activation
        self.dropout = dropout
        self.num_key_value_heads = num_key_value_heads
        self.normalization = normalization
        self.layer_norm_epsilon = layer_norm_epsilon
        self.use_bias = use_bias
        self.tie_embeddings = tie_embeddings
        self.rotary_max_wavelength = rotary_max_wavelength
        self.pad_token_id = pad_token_id
        self.remat = remat
        self._layers_dtype = dtype
        self._generate_functions = {}
        self._named_samplers = {}

    @classmethod
    def from_preset(cls, preset, **overrides):
        """Builds an encoder-decoder of a named size.

        Args:
            preset: a name of
                `keras_llm.models.presets.ENCODER_DECODER_PRESETS`, such as
                `"transformer_base"`.
            **overrides: arguments that replace the preset's (for example
                `vocabulary_size`).
        """
        import copy

        from keras_llm.models.presets import ENCODER_DECODER_PRESETS

        if preset not in ENCODER_DECODER_PRESETS:
            raise ValueError(
                f"Unknown EncoderDecoder preset {preset!r}. Expected one of "
                f"{sorted(ENCODER_DECODER_PRESETS)}."
            )
        kwargs = copy.deepcopy(ENCODER_DECODER_PRESETS[preset])
        kwargs.update(overrides)
        return cls(**kwargs)

    # --- Inputs ---

    def _complete_inputs(self, inputs):
        if not isinstance(inputs, dict):
            raise TypeError(
                "`EncoderDecoder` expects a dict with 'encoder_token_ids' and "
                "'decoder_token_ids' (and optionally 'encoder_padding_mask', "
                f"'decoder_padding_mask'). Received: {type(inputs).__name__}."
            )
        unknown = sorted(set(inputs) - set(_INPUT_NAMES))
        missing = [
            k
            for k in ("encoder_token_ids", "decoder_token_ids")
            if inputs.get(k) is None
        ]
        if unknown or missing:
            raise ValueError(
                "`EncoderDecoder` expects the inputs "
                f"{list(_INPUT_NAMES)} (padding masks optional). "
                f"Missing: {missing}; unknown: {unknown}."
            )
        inputs = {k: v for k, v in inputs.items() if v is not None}
        for key in ("encoder_token_ids", "decoder_token_ids"):
            inputs[key] = ops.cast(inputs[key], "int32")
        if "encoder_padding_mask" not in inputs:
            inputs["encoder_padding_mask"] = ops.not_equal(
                inputs["encoder_token_ids"], self.pad_token_id
            )
        if "decoder_padding_mask" not in inputs:
            inputs["decoder_padding_mask"] = ops.ones_like(
                inputs["decoder_token_ids"]
            )
        for key in ("encoder_padding_mask", "decoder_padding_mask"):
            inputs[key] = ops.cast(inputs[key], "int32")
        return inputs

    def call(self, inputs, training=None, mask=None, **kwargs):
        return super().call(
            self._complete_inputs(inputs),
            training=training,
            mask=mask,
            **kwargs,
        )

    # --- Encoding and incremental decoding ---

    def encode(self, encoder_token_ids, encoder_padding_mask=None):
        """Runs the encoder alone.

        Args:
            encoder_token_ids: `(B, S)` int tensor of source ids.
            encoder_padding_mask: `(B, S)` mask of valid positions, or
                `None` for every id other than `pad_token_id`.

        Returns:
            `(B, S, hidden_dim)` encoder outputs.
        """
        encoder_token_ids = ops.cast(encoder_token_ids, "int32")
        if encoder_padding_mask is None:
            encoder_padding_mask = ops.not_equal(
                encoder_token_ids, self.pad_token_id
            )
        return _encode(
            (
                self.decoder_token_embedding
                if self.encoder_token_embedding is None
                else self.encoder_token_embedding,
                self.encoder_position_embedding,
                self.encoder_embedding_dropout,
                self.encoder_blocks,
                self.encoder_final_norm,
            ),
            encoder_token_ids,
            ops.cast(encoder_padding_mask, "int32"),
        )

    def call_with_cache(
        self,
        decoder_token_ids,
        encoder_outputs,
        encoder_padding_mask,
        cache,
        cache_update_index,
    ):
        """Decoder pass over new target tokens with a self-attention cache.

        Only the decoder's self-attention is cached; each cross-attention
        projects `encoder_outputs` to keys and values again on every call
        (one `(S, hidden_dim)` matmul per layer and step), which keeps the
        cache a single tensor shaped like `GPT`'s.

        Args:
            decoder_token_ids: `(B, T)` int tensor of the new target tokens.
            encoder_outputs: `(B, S, hidden_dim)` output of `encode`.
            encoder_padding_mask: `(B, S)` mask of valid source positions.
            cache: `(B, num_decoder_layers, 2, T_max, kv_heads, key_dim)`
                key/value cache.
            cache_update_index: position of `decoder_token_ids[:, 0]`.

        Returns:
            `(logits, hidden_states, cache)`.
        """
        x = _embed(
            self.decoder_token_embedding,
            self.decoder_position_embedding,
            self.decoder_embedding_dropout,
            decoder_token_ids,
            start=cache_update_index,
        )
        encoder_padding_mask = ops.cast(encoder_padding_mask, "int32")
        caches = []
        for i, block in enumerate(self.decoder_blocks):
            x, layer_cache = block(
                x,
                encoder_outputs,
                encoder_padding_mask=encoder_padding_mask,
                cache=cache[:, i],
                cache_update_index=cache_update_index,
            )
            caches.append(layer_cache)
        cache = ops.stack(caches, axis=1)
        if self.decoder_final_norm is not None:
            x = self.decoder_final_norm(x)
        logits = self.decoder_token_embedding(x, reverse=True)
        return ops.cast(logits, "float32"), x, cache

    def _empty_cache(self, batch_size, max_length):
        kv_heads = self.num_key_value_heads or self.num_heads
        shape = (
            batch_size,
            self.num_decoder_layers,
            2,
            max_length,
            kv_heads,
            self.hidden_dim // self.num_heads,
        )
        return ops.zeros(shape, dtype=self.compute_dtype)

    def _generate_ids(
        self, encoder_ids, encoder_mask, token_ids, mask, sampler, stop_ids
    ):
        encoder_outputs = self.encode(encoder_ids, encoder_mask)
        encoder_mask = ops.cast(encoder_mask, "int32")
        batch_size, max_length = ops.shape(token_ids)
        cache = self._empty_cache(batch_size, max_length)
        # Fills the cache over the whole buffer like `GPT`: positions after
        # the start token hold placeholders that each step overwrites
        # before the causal mask lets a later query see them.
        _, hidden_states, cache = self.call_with_cache(
            token_ids, encoder_outputs, encoder_mask, cache, 0
        )

        def next(prompt, state, index):
            cache, outputs, source_mask = state
            cache_update_index = index - 1
            # Beam search repeats every row (the encoder outputs too, as
            # they travel in the sampler's cache): read the rows here.
            rows = ops.shape(prompt)[0]
            prompt = ops.slice(prompt, [0, cache_update_index], [rows, 1])
            logits, hidden, cache = self.call_with_cache(
                prompt, outputs, source_mask, cache, cache_update_index
            )
            return (
                ops.squeeze(logits, axis=1),
                ops.squeeze(hidden, axis=1),
                (cache, outputs, source_mask),
            )

        return sampler(
            next=next,
            prompt=token_ids,
            cache=(cache, encoder_outputs, encoder_mask),
            index=1,
            mask=mask,
            stop_token_ids=stop_ids,
            hidden_states=hidden_states,
            model=self,
        )

    def _source_batch(self, encoder_inputs):
        owner = "EncoderDecoder.generate"
        if isinstance(encoder_inputs, dict):
            if "encoder_token_ids" not in encoder_inputs:
                raise ValueError(
                    f"`{owner}` got a dict without 'encoder_token_ids'."
                )
            ids = np.asarray(
                keras.ops.convert_to_numpy(encoder_inputs["encoder_token_ids"])
            ).astype("int32")
            mask = encoder_inputs.get("encoder_padding_mask")
            if mask is None:
                mask = ids != self.pad_token_id
            mask = np.asarray(keras.ops.convert_to_numpy(mask)).astype(bool)
        elif isinstance(encoder_inputs, str) or (
            len(encoder_inputs) and isinstance(encoder_inputs[0], str)
        ):
            raise TypeError(
                f"`{owner}` expects token ids; tokenize strings first."
            )
        elif isinstance(encoder_inputs, np.ndarray) or keras.ops.is_tensor(
            encoder_inputs
        ):
            ids = np.asarray(keras.ops.convert_to_numpy(encoder_inputs))
            ids = ids.astype("int32")
            mask = ids != self.pad_token_id
        else:
            ids, mask = _pad_rows(
                encoder_inputs, self.pad_token_id, owner, "source"
            )
        if ids.ndim != 2 or ids.shape != mask.shape or not ids.size:
            raise ValueError(
                f"`{owner}` expects `(batch, length)` source ids and a mask "
                f"of the same shape. Received ids of shape {ids.shape}."
            )
        if (
            self.position_embedding == "learned"
            and ids.shape[1] > self.max_sequence_length
        ):
            raise ValueError(
                f"`{owner}` got sources of length {ids.shape[1]}, longer "
                f"than max_sequence_length={self.max_sequence_length}."
            )
        return ids, mask

    def generate(
        self,
        encoder_inputs,
        max_length,
        start_token_id,
        end_token_id=None,
        sampler="greedy",
        seed=None,
    ):
        """Translates sources token by token with a keras-hub sampler.

        The source is encoded once. Each new target token then runs the
        decoder on one position against a key/value cache of its
        self-attention; the cross-attention keys and values are recomputed
        from the cached encoder outputs at every step (see
        `call_with_cache`). Beam search works: the encoder outputs travel in
        the sampler's cache, which it repeats per beam.

        Args:
            encoder_inputs: source ids as a list of lists (ragged is fine,
                it is padded with `pad_token_id`), a `(B, S)` array (ids
                equal to `pad_token_id` are padding) or a dict with
                `"encoder_token_ids"` and optionally
                `"encoder_padding_mask"`.
            max_length: int. Length of each output, start token included.
            start_token_id: int. The first decoder token.
            end_token_id: int or `None`. Token that ends a sequence;
                generation stops once every row has produced it and the
                positions after it hold `pad_token_id`. Defaults to `None`.
            sampler: a keras-hub sampler or its name (`"greedy"`,
                `"top_k"`, `"top_p"`, `"random"`, `"beam"`). Defaults to
                `"greedy"`.
            seed: int or `None`. Seed of the sampler's randomness. Defaults
                to `None`.

        Returns:
            A `(B, max_length)` numpy array of target ids that starts with
            `start_token_id`.
        """
        owner = "EncoderDecoder.generate"
        target_vocabulary = self.target_vocabulary_size or self.vocabulary_size
        for name, value in (
            ("start_token_id", start_token_id),
            ("end_token_id", end_token_id),
        ):
            if value is None and name == "end_token_id":
                continue
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, np.integer))
                or not 0 <= value < target_vocabulary
            ):
                raise ValueError(
                    f"`{owner}` expects `{name}` to be a target id below "
                    f"{target_vocabulary}. Received: {value!r}."
                )
        if (
            isinstance(max_length, bool)
            or not isinstance(max_length, int)
            or max_length < 2
        ):
            raise ValueError(
                f"`{owner}` expects `max_length` to be an int of at least 2 "
                f"(the start token and one more). Received: {max_length!r}."
            )
        if (
            self.position_embedding == "learned"
            and max_length > self.max_target_length
        ):
            raise ValueError(
                f"`{owner}` max_length={max_length} exceeds the model's "
                f"max_target_length={self.max_target_length}."
            )
        encoder_ids, encoder_mask = self._source_batch(encoder_inputs)
        batch_size = len(encoder_ids)
        token_ids = np.full(
            (batch_size, max_length), self.pad_token_id, "int32"
        )
        token_ids[:, 0] = start_token_id
        mask = np.zeros((batch_size, max_length), bool)
        mask[:, 0] = True

        if isinstance(sampler, str):
            # One sampler (and one traced function) per name, not per call.
            if sampler not in self._named_samplers:
                self._named_samplers[sampler] = keras_hub.samplers.get(sampler)
            sampler = self._named_samplers[sampler]
        generator = getattr(sampler, "seed_generator", None)
        if seed is not None and generator is not None:
            generator.state.assign(
                np.array([seed, 0], dtype=generator.state.dtype)
            )
        stop_ids = None if end_token_id is None else (int(end_token_id),)
        fn = self._compiled_generate(sampler, stop_ids)
        out = fn(encoder_ids, encoder_mask, token_ids, mask)
        out = np.array(keras.ops.convert_to_numpy(out))
        if end_token_id is not None:
            is_end = out[:, 1:] == end_token_id
            after_end = np.cumsum(is_end, axis=1) - is_end > 0
            out[:, 1:][after_end] = self.pad_token_id
        return out

    def _compiled_generate(self, sampler, stop_ids):
        key = (id(sampler), stop_ids)
        if key in self._generate_functions:
            return self._generate_functions[key][1]

        def fn(encoder_ids, encoder_mask, token_ids, mask):
            return self._generate_ids(
                encoder_ids, encoder_mask, token_ids, mask, sampler, stop_ids
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
            "num_encoder_layers": self.num_encoder_layers,
            "num_decoder_layers": self.num_decoder_layers,
            "num_heads": self.num_heads,
            "hidden_dim": self.hidden_dim,
            "intermediate_dim": self.intermediate_dim,
            "max_sequence_length": self.max_sequence_length,
            "max_target_length": self.max_target_length,
            "target_vocabulary_size": self.target_vocabulary_size,
            "position_embedding": self.position_embedding,
            "activation": self.activation,
            "dropout": self.dropout,
            "num_key_value_heads": self.num_key_value_heads,
            "normalization": self.normalization,
            "layer_norm_epsilon": self.layer_norm_epsilon,
            "use_bias": self.use_bias,
            "tie_embeddings": self.tie_embeddings,
            "rotary_max_wavelength": self.rotary_max_wavelength,
            "pad_token_id": self.pad_token_id,
            "remat": self.remat,
            "dtype": serialize_dtype(self, self._layers_dtype),
            **serialize_sublayers(self),
        }

    @classmethod
    def from_config(cls, config):
        return from_model_config(cls, config)
