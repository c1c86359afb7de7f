"""One Transformer block: attention, optional cross-attention, feed-forward.

keras-hub ships separate `TransformerEncoder` and `TransformerDecoder` layers
with their attention hard-wired; this block is one layer for both directions
whose attention is pluggable (a registered name or a layer instance), so the
efficient attention layers of `keras_llm.layers.attention` drop into the same
block, the models and their key/value cache.
"""

import keras
from keras import ops

from keras_llm.checks import check_positive_int
from keras_llm.checks import check_rate
from keras_llm.layers.attention.multi_head_attention import clone_initializer
from keras_llm.layers.attention.registry import get_attention
from keras_llm.layers.attention.registry import make_attention
from keras_llm.layers.feed_forward import FeedForward


class BlockParts:
    """Sublayers that every Transformer-style block builds the same way:
    layer norms, the feed-forward network with its norm, residual dropout.
    Mixed into a `keras.layers.Layer` with `layer_norm_epsilon`, `use_bias`,
    `intermediate_dim`, `activation`, `dropout`, `kernel_initializer`,
    `attention_kwargs` and `rotary_max_wavelength`."""

    def _attention_options(self):
        """The attention's own arguments: `attention_kwargs` plus rotary."""
        options = dict(self.attention_kwargs)
        if self.rotary_max_wavelength is not None:
            options["rotary_max_wavelength"] = self.rotary_max_wavelength
        return options

    def _norm(self, name):
        return keras.layers.LayerNormalization(
            epsilon=self.layer_norm_epsilon,
            center=self.use_bias,
            dtype=self.dtype_policy,
            name=name,
        )

    def _build_feed_forward(self, inputs_shape):
        self.feed_forward = FeedForward(
            self.intermediate_dim,
            activation=self.activation,
            dropout=self.dropout,
            use_bias=self.use_bias,
            kernel_initializer=clone_initializer(self.kernel_initializer),
            dtype=self.dtype_policy,
            name="feed_forward",
        )
        self.feed_forward.build(inputs_shape)
        self.feed_forward_norm = self._norm("feed_forward_norm")
        self.feed_forward_norm.build(inputs_shape)
        self.residual_dropout = keras.layers.Dropout(
            self.dropout, dtype=self.dtype_policy, name="residual_dropout"
        )


@keras.saving.register_keras_serializable(package="keras_llm")
class TransformerBlock(BlockParts, keras.layers.Layer):
    """Transformer block, pre-LN or post-LN, bidirectional or causal.

    Pre-LN (the default, GPT-2 style) computes
    `x + attn(norm(x))` then `x + ffn(norm(x))`; post-LN (the original
    Transformer and BERT) computes `norm(x + attn(x))` then
    `norm(x + ffn(x))`. With `cross_attention=True` a second attention over
    `encoder_outputs` sits between the two, as in the decoder of an
    encoder-decoder.

    Args:
        num_heads: int. Number of attention heads.
        intermediate_dim: int. Hidden width of the feed-forward network.
        attention: the self-attention: a registered name (see
            `keras_llm.layers.attention.registered_attention_names()`), a
            serialized layer config or a layer instance following the
            registry's call contract. Defaults to `"dense"`.
        attention_kwargs: dict of extra constructor arguments for a named
            attention (for example `{"window": 256}`). Defaults to `None`.
        key_dim: int or `None`. Size of each head; `None` means
            `hidden_dim // num_heads`. Defaults to `None`.
        num_key_value_heads: int or `None`. Key/value heads for
            grouped-query attention. Defaults to `None`.
        activation: feed-forward activation, `"gelu"` or `"swiglu"` (or any
            activation `FeedForward` accepts). Defaults to `"gelu"`.
        dropout: float. Dropout on the residual branches and the
            feed-forward hidden layer. Defaults to `0.0`.
        attention_dropout: float. Dropout on attention probabilities.
            Defaults to `0.0`.
        normalization: `"pre"` or `"post"`. Defaults to `"pre"`.
        layer_norm_epsilon: float. Defaults to `1e-5`.
        causal: bool. Whether self-attention is causal (decoder) or
            bidirectional (encoder). Defaults to `False`.
        cross_attention: bool. Whether to add attention over
            `encoder_outputs`. Defaults to `False`.
        rotary_max_wavelength: int or `None`. Rotary positions in the
            self-attention when set. Defaults to `None`.
        use_bias: bool. Biases in projections and layer norms. Defaults to
            `True`.
        kernel_initializer: initializer of the kernels. Defaults to
            `"glorot_uniform"`.
        remat: bool. Gradient checkpointing: keep only the block's inputs
            for the backward pass and recompute its activations there
            (`keras.remat`), trading about one extra forward pass for the
            memory of the attention scores and feed-forward activations.
            Dropout masks are replayed exactly in the recomputation.
            Decoding with a cache never rematerializes. Defaults to `False`.
        **kwargs: standard `keras.layers.Layer` arguments.

    Call arguments:
        inputs: `(B, T, hidden_dim)` tensor.
        encoder_outputs: `(B, S, dim)` tensor, with `cross_attention=True`.
        padding_mask: `(B, T)` mask of valid positions.
        attention_mask: `(B, T, T)` self-attention mask.
        encoder_padding_mask: `(B, S)` mask of valid encoder positions.
        encoder_attention_mask: `(B, T, S)` cross-attention mask.
        cache: self-attention key/value cache `(B, 2, S_max, heads, key_dim)`
            for incremental decoding, or `None`.
        cache_update_index: position of the first input token in the cache.
        training: bool.

    Returns:
        `(B, T, hidden_dim)`, or `(outputs, cache)` when a cache was given.

    Example:

    ```python
    import numpy as np
    import keras_llm

    block = keras_llm.layers.TransformerBlock(
        num_heads=2, intermediate_dim=64, causal=True
    )
    y = block(np.random.rand(2, 5, 16).astype("float32"))  # (2, 5, 16)
    ```

    References:
        - [Vaswani et al., 2017](https://arxiv.org/abs/1706.03762)
        - [Xiong et al., 2020, On Layer Normalization in the Transformer](https://arxiv.org/abs/2002.04745)
    """

    def __init__(
        self,
        num_heads,
        intermediate_dim,
        attention="dense",
        attention_kwargs=None,
        key_dim=None,
        num_key_value_heads=None,
        activation="gelu",
        dropout=0.0,
        attention_dropout=0.0,
        normalization="pre",
        layer_norm_epsilon=1e-5,
        causal=False,
        cross_attention=False,
        rotary_max_wavelength=None,
        use_bias=True,
        kernel_initializer="glorot_uniform",
        remat=False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if normalization not in ("pre", "post"):
            raise ValueError(
                "`TransformerBlock` expects `normalization` to be 'pre' or "
                f"'post'. Received: normalization={normalization!r}."
            )
        check_positive_int("TransformerBlock", "num_heads", num_heads)
        check_positive_int(
            "TransformerBlock", "intermediate_dim", intermediate_dim
        )
        check_rate("TransformerBlock", "dropout", dropout)
        check_rate("TransformerBlock", "attention_dropout", attention_dropout)
        if isinstance(attention, keras.layers.Layer):
            # Track the given instance under the same attribute the block
            # builds otherwise, so saved weights load into a revived block.
            self.self_attention = attention
            attention = keras.saving.serialize_keras_object(attention)
        elif not isinstance(attention, (str, dict)):
            raise TypeError(
                "`TransformerBlock` expects `attention` to be a "
                "registered name, a layer config dict or a layer. "
                f"Received: {attention!r}."
            )
        self.attention = attention
        self.attention_kwargs = dict(attention_kwargs or {})
        self.num_heads = num_heads
        self.intermediate_dim = intermediate_dim
        self.key_dim = key_dim
        self.num_key_value_heads = num_key_value_heads
        self.activation = activation
        self.dropout = dropout
        self.attention_dropout = attention_dropout
        self.normalization = normalization
        self.layer_norm_epsilon = layer_norm_epsilon
        self.causal = causal
        self.cross_attention = cross_attention
        self.rotary_max_wavelength = rotary_max_wavelength
        self.use_bias = use_bias
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.remat = bool(remat)
        self.supports_masking = True

    def _make_attention(self, name, hidden_dim, **extra):
        kwargs = dict(
            num_heads=self.num_heads,
            key_dim=self.key_dim or hidden_dim // self.num_heads,
            dropout=self.attention_dropout,
            use_bias=self.use_bias,
            kernel_initializer=clone_initializer(self.kernel_initializer),
            dtype=self.dtype_policy,
            name=name,
        )
        if self.num_key_value_heads is not None:
            kwargs["num_key_value_heads"] = self.num_key_value_heads
        kwargs.update(extra)
        return kwargs

    def build(self, inputs_shape, encoder_outputs_shape=None):
        if len(inputs_shape) != 3:
            raise ValueError(
                "`TransformerBlock` expects inputs of rank 3 (batch, length, "
                f"hidden_dim). Received shape {inputs_shape}."
            )
        hidden_dim = inputs_shape[-1]
        if self.key_dim is None and hidden_dim % self.num_heads:
            raise ValueError(
                "`TransformerBlock` expects the input width to be divisible "
                f"by `num_heads`. Received width {hidden_dim}, "
                f"num_heads={self.num_heads}."
            )
        if not hasattr(self, "self_attention"):
            self.self_attention = make_attention(
                self.attention,
                self._attention_options(),
                **self._make_attention("self_attention", hidden_dim),
            )
        if not self.self_attention.built:
            self.self_attention.build(inputs_shape)
        self.self_attention_norm = self._norm("self_attention_norm")
        self.self_attention_norm.build(inputs_shape)
        if self.cross_attention:
            enc_shape = encoder_outputs_shape or inputs_shape
            self.cross_attention_layer = get_attention(
                "dense",
                **self._make_attention(
                    "cross_attention", hidden_dim, output_dim=hidden_dim
                ),
            )
            self.cross_attention_layer.build(inputs_shape, enc_shape)
            self.cross_attention_norm = self._norm("cross_attention_norm")
            self.cross_attention_norm.build(inputs_shape)
        self._build_feed_forward(inputs_shape)
        self.built = True

    def _sublayer(self, x, norm, fn, training):
        """Residual wrapper shared by every sublayer, in pre- or post-LN order."""
        pre = self.normalization == "pre"
        y = fn(norm(x) if pre else x)
        extra = None
        if isinstance(y, tuple):
            y, extra = y
        x = x + self.residual_dropout(y, training=training)
        if not pre:
            x = norm(x)
        return x, extra

    def call(
        self,
        inputs,
        encoder_outputs=None,
        padding_mask=None,
        attention_mask=None,
        encoder_padding_mask=None,
        encoder_attention_mask=None,
        cache=None,
        cache_update_index=None,
        training=None,
    ):
        if self.cross_attention and encoder_outputs is None:
            raise ValueError(
                f"`{self.name}` has cross_attention=True and needs "
                "`encoder_outputs`."
            )
        if not self.cross_attention and encoder_outputs is not None:
            raise ValueError(
                f"`{self.name}` got `encoder_outputs` but was built with "
                "cross_attention=False."
            )
        masks = dict(
            padding_mask=padding_mask,
            attention_mask=attention_mask,
            encoder_padding_mask=encoder_padding_mask,
            encoder_attention_mask=encoder_attention_mask,
        )
        if self.remat and cache is None and training is not False:
            return self._rematerialized(
                inputs, encoder_outputs, masks, training
            )
        return self._forward(
            inputs, encoder_outputs, **masks, cache=cache,
            cache_update_index=cache_update_index, training=training,
        )  # fmt: skip

    def _rematerialized(self, inputs, encoder_outputs, masks, training):
        """`_forward` under `keras.remat`, replaying the dropout seeds.

        `keras.remat` (on TensorFlow `tf.recompute_grad`) re-runs the
        function in the backward pass; the inputs go in as positional
        arguments, the masks are captured. Dropout draws its mask from a
        seed generator whose state advances on every call, so the
        recomputation would draw new masks: the states are read before the
        call and put back at the start of the function, so both runs draw
        the same masks and the states end where one call leaves them.
        """
        generators = []
        if training:
            for layer in self._flatten_layers(include_self=False):
                generators.extend(getattr(layer, "_seed_generators", []))
        states = [ops.copy(g.state) for g in generators]

        def forward(x, *encoder):
            for generator, state in zip(generators, states):
                generator.state.assign(state)
            return self._forward(
                x, encoder[0] if encoder else None, **masks, training=training
            )

        args = (
            (inputs,) if encoder_outputs is None else (inputs, encoder_outputs)
        )
        return keras.remat(forward)(*args)

    def _forward(
        self,
        inputs,
        encoder_outputs,
        padding_mask=None,
        attention_mask=None,
        encoder_padding_mask=None,
        encoder_attention_mask=None,
        cache=None,
        cache_update_index=None,
        training=None,
    ):
        attn_kwargs = dict(
            padding_mask=padding_mask,
            attention_mask=attention_mask,
            use_causal_mask=self.causal,
            training=training,
        )
        if cache is not None:
            attn_kwargs.update(
                cache=cache, cache_update_index=cache_update_index
            )
        x, cache = self._sublayer(
            inputs,
            self.self_attention_norm,
            lambda h: self.self_attention(h, **attn_kwargs),
            training,
        )
        if self.cross_attention:
            x, _ = self._sublayer(
                x,
                self.cross_attention_norm,
                lambda h: self.cross_attention_layer(
                    h,
                    encoder_outputs,
                    padding_mask=encoder_padding_mask,
                    attention_mask=encoder_attention_mask,
                    training=training,
                ),
                training,
            )
        x, _ = self._sublayer(
            x,
            self.feed_forward_norm,
            lambda h: self.feed_forward(h, training=training),
            training,
        )
        if cache is not None:
            return x, cache
        return x

    def compute_output_shape(self, inputs_shape, *args, **kwargs):
        return inputs_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_heads": self.num_heads,
                "intermediate_dim": self.intermediate_dim,
                "attention": self.attention,
                "attention_kwargs": self.attention_kwargs,
                "key_dim": self.key_dim,
                "num_key_value_heads": self.num_key_value_heads,
                "activation": self.activation,
                "dropout": self.dropout,
                "attention_dropout": self.attention_dropout,
                "normalization": self.normalization,
                "layer_norm_epsilon": self.layer_norm_epsilon,
                "causal": self.causal,
                "cross_attention": self.cross_attention,
                "rotary_max_wavelength": self.rotary_max_wavelength,
                "use_bias": self.use_bias,
                "kernel_initializer": keras.initializers.serialize(
                    self.kernel_initializer
                ),
                "remat": self.remat,
            }
        )
        return config
