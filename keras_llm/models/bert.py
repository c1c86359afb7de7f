"""BERT: a bidirectional encoder and its masked-LM + next-sentence pretrainer.

keras-hub's `BertBackbone` fixes BERT's architecture (its own encoder layer,
post-LN only) and keras-hub has no next-sentence prediction. `BERT` here is
built from `keras_llm.layers.TransformerBlock` (non-causal), so the attention
and the normalisation order are arguments, and `BertPretrainer` trains
keras-hub's `MaskedLMHead` (tied to the token embedding) and
`keras_llm.layers.heads.NextSentenceHead` together in one `model.fit`, with
per-head losses, loss weights and metrics.
"""

import keras
import keras_hub
import numpy as np
from keras import ops

from keras_llm.checks import check_positive_int
from keras_llm.checks import check_rate
from keras_llm.layers.heads.next_sentence_head import NextSentenceHead
from keras_llm.layers.transformer_block import TransformerBlock
from keras_llm.models.dtypes import from_model_config
from keras_llm.models.dtypes import serialize_dtype
from keras_llm.models.dtypes import serialize_sublayers
from keras_llm.models.layout import LayoutMapMixin

BERT_INPUTS = ("token_ids", "segment_ids", "padding_mask")
PRETRAINER_INPUTS = BERT_INPUTS + ("mask_positions",)


def _initializer():
    return keras.initializers.TruncatedNormal(stddev=0.02)


def _with_default_inputs(owner, inputs, names):
    """Completes an input dict: a missing (or `None`) `padding_mask` becomes
    `token_ids != 0`, a missing `segment_ids` all zeros; a bare tensor is
    taken as `token_ids`."""
    if not isinstance(inputs, dict):
        inputs = {"token_ids": inputs}
    unknown = sorted(set(inputs) - set(names))
    if unknown or inputs.get("token_ids") is None:
        raise ValueError(
            f"`{owner}` expects a dict with keys {list(names)} "
            "(`segment_ids` and `padding_mask` may be left out). Received "
            f"keys {sorted(inputs)}."
        )
    # Keras refuses dicts mixing arrays and tensors: make them all tensors.
    inputs = {
        k: ops.convert_to_tensor(v) if isinstance(v, (np.ndarray, list)) else v
        for k, v in inputs.items()
    }
    token_ids = inputs["token_ids"]
    if inputs.get("padding_mask") is None:
        inputs["padding_mask"] = ops.cast(ops.not_equal(token_ids, 0), "int32")
    if inputs.get("segment_ids") is None:
        inputs["segment_ids"] = ops.zeros_like(token_ids, dtype="int32")
    return inputs


@keras.saving.register_keras_serializable(package="keras_llm")
class BERT(LayoutMapMixin, keras.Model):
    """BERT-style bidirectional Transformer encoder.

    Token, learned position and segment embeddings are summed, layer
    normalised and passed through a stack of non-causal `TransformerBlock`s.
    The model returns the sequence output only, `(batch, length,
    hidden_dim)` in the compute dtype of the policy; heads
    (`keras_hub.layers.MaskedLMHead`, the heads in `keras_llm.layers.heads`)
    pool it themselves and return float32 logits.

    Inputs are a dict:
    - `token_ids`: `(B, T)` int ids. Id `0` is the padding id (`[PAD]`).
    - `segment_ids`: `(B, T)` int, `0` for segment A, `1` for segment B.
      Optional: all zeros when left out.
    - `padding_mask`: `(B, T)` int or bool, true for real tokens. Optional:
      `token_ids != 0` when left out or `None`.
    A bare `(B, T)` tensor is taken as `token_ids`.

    Args:
        vocabulary_size: int. Number of token ids.
        num_layers: int. Number of Transformer blocks.
        num_heads: int. Attention heads per block.
        hidden_dim: int. Width of the residual stream.
        intermediate_dim: int or `None`. Feed-forward hidden width; `None`
            means `4 * hidden_dim`. Defaults to `None`.
        max_sequence_length: int. Longest input (learned positions).
            Defaults to `512`.
        num_segments: int. Number of segment ids. Defaults to `2`.
        dropout: float. Dropout on embeddings, residual branches and the
            feed-forward hidden layer. Defaults to `0.1`.
        attention_dropout: float or `None`. Dropout on attention
            probabilities; `None` means `dropout`. Defaults to `None`.
        activation: feed-forward activation (`"gelu"`, `"geglu"`,
            `"swiglu"`, ...). Defaults to `"gelu"`.
        normalization: `"post"` (original BERT: `norm(x + f(x))`) or
            `"pre"` (`x + f(norm(x))`, with a final layer norm). Defaults
            to `"post"`.
        layer_norm_epsilon: float. Defaults to `1e-12`.
        attention: attention of every block: a registered name (see
            `keras_llm.layers.attention.registered_attention_names()`) or a
            layer config. Defaults to `"dense"`.
        attention_kwargs: dict of extra arguments of the named attention.
            Defaults to `None`.
        use_bias: bool. Biases in dense layers and layer norms. Defaults to
            `True`.
        remat: bool. Gradient checkpointing in every block (see
            `TransformerBlock`). Defaults to `False`.
        dtype: dtype policy of the layers, or `None` for the global policy.
            Defaults to `None`.
        **kwargs: `keras.Model` arguments (`name`, `trainable`).

    Example:

    ```python
    import numpy as np
    import keras_llm

    model = keras_llm.models.BERT(
        vocabulary_size=50, num_layers=2, num_heads=2, hidden_dim=32,
        max_sequence_length=16,
    )
    outputs = model({
        "token_ids": np.array([[2, 7, 8, 3, 9, 3, 0, 0]]),
        "segment_ids": np.array([[0, 0, 0, 0, 1, 1, 0, 0]]),
    })  # (1, 8, 32); padding_mask defaults to token_ids != 0
    ```

    References:
        - [Devlin et al., 2019, BERT](https://arxiv.org/abs/1810.04805)
    """

    def __init__(
        self,
        vocabulary_size,
        num_layers,
        num_heads,
        hidden_dim,
        intermediate_dim=None,
        max_sequence_length=512,
        num_segments=2,
        dropout=0.1,
        attention_dropout=None,
        activation="gelu",
        normalization="post",
        layer_norm_epsilon=1e-12,
        attention="dense",
        attention_kwargs=None,
        use_bias=True,
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
            "num_segments",
        ):
            check_positive_int("BERT", arg, locals()[arg])
        intermediate_dim = intermediate_dim or 4 * hidden_dim
        check_positive_int("BERT", "intermediate_dim", intermediate_dim)
        check_rate("BERT", "dropout", dropout)
        if attention_dropout is not None:
            check_rate("BERT", "attention_dropout", attention_dropout)
        if hidden_dim % num_heads:
            raise ValueError(
                "`BERT` expects `hidden_dim` to be divisible by `num_heads`. "
                f"Received: hidden_dim={hidden_dim}, num_heads={num_heads}."
            )
        if normalization not in ("pre", "post"):
            raise ValueError(
                "`BERT` expects `normalization` to be 'pre' or 'post'. "
                f"Received: normalization={normalization!r}."
            )
        if isinstance(attention, keras.layers.Layer):
            # Each block builds its own copy from the config.
            attention = keras.saving.serialize_keras_object(attention)

        # === Layers ===
        token_embedding = keras.layers.ReversibleEmbedding(
            vocabulary_size,
            hidden_dim,
            embeddings_initializer=_initializer(),
            dtype=dtype,
            name="token_embedding",
        )
        position_embedding = keras_hub.layers.PositionEmbedding(
            max_sequence_length,
            initializer=_initializer(),
            dtype=dtype,
            name="position_embedding",
        )
        segment_embedding = keras.layers.Embedding(
            num_segments,
            hidden_dim,
            embeddings_initializer=_initializer(),
            dtype=dtype,
            name="segment_embedding",
        )
        embedding_norm = keras.layers.LayerNormalization(
            epsilon=layer_norm_epsilon,
            center=use_bias,
            dtype=dtype,
            name="embedding_norm",
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
                activation=activation,
                dropout=dropout,
                attention_dropout=(
                    dropout if attention_dropout is None else attention_dropout
                ),
                normalization=normalization,
                layer_norm_epsilon=layer_norm_epsilon,
                causal=False,
                use_bias=use_bias,
                kernel_initializer=_initializer(),
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
        inputs = {
            name: keras.Input(shape=(None,), dtype="int32", name=name)
            for name in BERT_INPUTS
        }
        tokens = token_embedding(inputs["token_ids"])
        x = (
            tokens
            + position_embedding(tokens)
            + segment_embedding(inputs["segment_ids"])
        )
        x = embedding_dropout(embedding_norm(x))
        for block in blocks:
            x = block(x, padding_mask=inputs["padding_mask"])
        if final_norm is not None:
            x = final_norm(x)
        super().__init__(inputs=inputs, outputs=x, **kwargs)

        self._token_embedding = token_embedding
        self.position_embedding = position_embedding
        self.segment_embedding = segment_embedding
        self.embedding_norm = embedding_norm
        self.embedding_dropout = embedding_dropout
        self.blocks = blocks
        self.final_norm = final_norm

        # === Config ===
        self.vocabulary_size = vocabulary_size
        self.num_layers = num_layers
        self.num_heads = num_heads
        self._hidden_dim = hidden_dim
        self.intermediate_dim = intermediate_dim
        self.max_sequence_length = max_sequence_length
        self.num_segments = num_segments
        self.dropout = dropout
        self.attention_dropout = attention_dropout
        self.activation = activation
        self.normalization = normalization
        self.layer_norm_epsilon = layer_norm_epsilon
        self.attention = attention
        self.attention_kwargs = attention_kwargs
        self.use_bias = use_bias
        self.remat = remat
        self._layers_dtype = dtype

    @property
    def token_embedding(self):
        """The `keras.layers.ReversibleEmbedding` of the token ids; an MLM
        head projects onto the vocabulary with its transpose."""
        return self._token_embedding

    @property
    def hidden_dim(self):
        """Width of the sequence output."""
        return self._hidden_dim

    def __call__(self, inputs, *args, **kwargs):
        return super().__call__(
            _with_default_inputs("BERT", inputs, BERT_INPUTS), *args, **kwargs
        )

    @classmethod
    def from_preset(cls, preset, **overrides):
        """Builds a BERT of a named size from `keras_llm.models.presets`.

        Args:
            preset: a name from `keras_llm.models.presets.BERT_PRESETS`,
                such as `"bert_nano"` or `"bert_base"`.
            **overrides: arguments that replace the preset's (for example
                `vocabulary_size`, needed by every preset but `bert_base`).

        Returns:
            A `BERT`.

        Example:

        ```python
        import keras_llm

        model = keras_llm.models.BERT.from_preset(
            "bert_nano", vocabulary_size=100
        )
        ```
        """
        from keras_llm.models.presets import get_bert_preset

        kwargs = get_bert_preset(preset)
        kwargs.update(overrides)
        return cls(**kwargs)

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
            "num_segments": self.num_segments,
            "dropout": self.dropout,
            "attention_dropout": self.attention_dropout,
            "activation": self.activation,
            "normalization": self.normalization,
            "layer_norm_epsilon": self.layer_norm_epsilon,
            "attention": self.attention,
            "attention_kwargs": self.attention_kwargs,
            "use_bias": self.use_bias,
            "remat": self.remat,
            "dtype": serialize_dtype(self, self._layers_dtype),
            **serialize_sublayers(self),
        }

    @classmethod
    def from_config(cls, config):
        return from_model_config(cls, config)


@keras.saving.register_keras_serializable(package="keras_llm")
class BertPretrainer(keras.Model):
    """Masked-LM plus next-sentence pretraining of a `BERT`, in one `fit`.

    Takes the inputs of `keras_llm.data.mlm_nsp_dataset`: a dict with
    `token_ids`, `segment_ids`, `padding_mask` and `mask_positions`
    (`(B, P)` positions of the masked tokens), and returns a dict of float32
    logits:
    - `"mlm"`: `(B, P, vocabulary_size)` from keras-hub's `MaskedLMHead`
      with its output projection tied to `backbone.token_embedding`;
    - `"nsp"`: `(B, 2)` from `keras_llm.layers.heads.NextSentenceHead`
      (class 1: segment B follows segment A).

    `compile()` defaults to one sparse cross-entropy per head, weighted by
    `mlm_weight` and `nsp_weight`, and per-head metrics weighted by the
    sample weights: `mlm_accuracy`, `mlm_perplexity` (keras-hub
    `metrics.Perplexity`) and `nsp_accuracy`. Labels are
    `{"mlm": mask_ids, "nsp": next_sentence_label}` and sample weights
    `{"mlm": mask_weights, "nsp": ones}` (Keras 3 wants a weight for every
    output once `sample_weight` is a dict), so padded mask slots count
    neither in the loss nor in the metrics. The MLM loss is averaged over
    the real masked tokens (`reduction="mean_with_sample_weight"`), so
    `mlm_loss` is nats per masked token and `exp(mlm_loss)` matches
    `mlm_perplexity`.

    Args:
        backbone: a `BERT`.
        mlm_weight: float. Weight of the masked-LM loss. Defaults to `1.0`.
        nsp_weight: float. Weight of the next-sentence loss. Defaults to
            `1.0`.
        dropout: float. Dropout in the next-sentence head. Defaults to
            `0.1`.
        **kwargs: `keras.Model` arguments (`name`, `trainable`).

    Example:

    ```python
    import keras_llm

    documents = [
        "The cat sat. It purred. Then it slept on the mat.",
        "Rain fell all day. The river rose. Boats stayed home.",
        "We baked bread. It was warm. Everyone ate a slice.",
    ]
    tokenizer = keras_llm.data.learn_mlm_tokenizer(
        documents, vocabulary_size=100
    )
    data = keras_llm.data.mlm_nsp_dataset(
        documents, tokenizer, sequence_length=16, batch_size=4, seed=0,
        repeat=True,
    )
    backbone = keras_llm.models.BERT.from_preset(
        "bert_nano", vocabulary_size=tokenizer.vocabulary_size()
    )
    pretrainer = keras_llm.models.BertPretrainer(backbone)
    pretrainer.compile(optimizer="adam")
    history = pretrainer.fit(data, steps_per_epoch=5, epochs=2, verbose=0)
    print(history.history["mlm_perplexity"], history.history["nsp_accuracy"])
    ```
    """

    def __init__(
        self, backbone, mlm_weight=1.0, nsp_weight=1.0, dropout=0.1, **kwargs
    ):
        if not isinstance(backbone, BERT):
            raise TypeError(
                "`BertPretrainer` expects `backbone` to be a "
                f"`keras_llm.models.BERT`. Received: {type(backbone).__name__}."
            )
        for name, value in (
            ("mlm_weight", mlm_weight),
            ("nsp_weight", nsp_weight),
        ):
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or value < 0
            ):
                raise ValueError(
                    f"`BertPretrainer` expects `{name}` to be a non-negative "
                    f"number. Received: {name}={value!r}."
                )
        check_rate("BertPretrainer", "dropout", dropout)
        dtype = backbone.dtype_policy

        # === Layers ===
        mlm_head = keras_hub.layers.MaskedLMHead(
            token_embedding=backbone.token_embedding,
            intermediate_activation="gelu",
            layer_norm_epsilon=backbone.layer_norm_epsilon,
            kernel_initializer=_initializer(),
            # float32: keras-hub 0.32's head adds its float32 bias to
            # bfloat16 logits (an error) when called inside a functional
            # model under mixed precision. The tied projection still runs
            # in the embedding's compute dtype.
            dtype="float32",
            name="mlm_head",
        )
        nsp_head = NextSentenceHead(
            dropout=dropout,
            kernel_initializer=_initializer(),
            dtype=dtype,
            name="nsp_head",
        )

        # === Functional graph ===
        inputs = {
            name: keras.Input(shape=(None,), dtype="int32", name=name)
            for name in PRETRAINER_INPUTS
        }
        sequence = backbone({name: inputs[name] for name in BERT_INPUTS})
        mlm = mlm_head(ops.cast(sequence, "float32"), inputs["mask_positions"])
        nsp = nsp_head(sequence)
        super().__init__(
            inputs=inputs, outputs={"mlm": mlm, "nsp": nsp}, **kwargs
        )

        self.backbone = backbone
        self.mlm_head = mlm_head
        self.nsp_head = nsp_head
        self.mlm_weight = float(mlm_weight)
        self.nsp_weight = float(nsp_weight)
        self.dropout = dropout

    def __call__(self, inputs, *args, **kwargs):
        return super().__call__(
            _with_default_inputs("BertPretrainer", inputs, PRETRAINER_INPUTS),
            *args,
            **kwargs,
        )

    def compile(
        self,
        optimizer="adam",
        loss="auto",
        loss_weights="auto",
        metrics=None,
        weighted_metrics="auto",
        **kwargs,
    ):
        """Configures training with per-head losses, weights and metrics.

        Args:
            optimizer: a Keras optimizer or its name. Defaults to `"adam"`.
            loss: `"auto"` for a `SparseCategoricalCrossentropy(from_logits=
                True)` per head (the MLM one averaged over the real masked
                tokens), or a Keras loss structure. Defaults to `"auto"`.
            loss_weights: `"auto"` for `{"mlm": mlm_weight, "nsp":
                nsp_weight}`, or a Keras loss-weights structure. Defaults to
                `"auto"`.
            metrics: unweighted metrics, as in `keras.Model.compile`.
                Defaults to `None`.
            weighted_metrics: `"auto"` for MLM accuracy and perplexity and
                NSP accuracy (weighted by the sample weights), or a Keras
                metrics structure. Defaults to `"auto"`.
            **kwargs: other `keras.Model.compile` arguments (for example
                `jit_compile`).
        """
        if loss == "auto":
            loss = {
                "mlm": keras.losses.SparseCategoricalCrossentropy(
                    from_logits=True,
                    reduction="mean_with_sample_weight",
                    name="mlm_loss",
                ),
                "nsp": keras.losses.SparseCategoricalCrossentropy(
                    from_logits=True, name="nsp_loss"
                ),
            }
        if loss_weights == "auto":
            loss_weights = {"mlm": self.mlm_weight, "nsp": self.nsp_weight}
        if weighted_metrics == "auto":
            weighted_metrics = {
                "mlm": [
                    keras.metrics.SparseCategoricalAccuracy(name="accuracy"),
                    keras_hub.metrics.Perplexity(
                        from_logits=True, name="perplexity"
                    ),
                ],
                "nsp": [
                    keras.metrics.SparseCategoricalAccuracy(name="accuracy")
                ],
            }
        super().compile(
            optimizer=optimizer,
            loss=loss,
            loss_weights=loss_weights,
            metrics=metrics,
            weighted_metrics=weighted_metrics,
            **kwargs,
        )

    def compile_from_config(self, config):
        # The saved config holds the resolved losses and metrics; Keras skips
        # it (with a warning) for a model whose `compile` is overridden.
        config = keras.saving.deserialize_keras_object(config)
        self.compile(**config)
        if hasattr(self, "optimizer") and self.built:
            self.optimizer.build(self.trainable_variables)

    def get_config(self):
        return {
            "name": self.name,
            "trainable": self.trainable,
            "backbone": keras.saving.serialize_keras_object(self.backbone),
            "mlm_weight": self.mlm_weight,
            "nsp_weight": self.nsp_weight,
            "dropout": self.dropout,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        backbone = config["backbone"]
        if isinstance(backbone, dict):
            config["backbone"] = keras.saving.deserialize_keras_object(backbone)
        return cls(**config)
