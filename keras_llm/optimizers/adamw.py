"""AdamW whose weight-decay exclusions survive saving.

Keras' `AdamW.exclude_from_weight_decay(var_names=...)` is state outside the
optimizer's config: a model saved to `.keras` and loaded again decays the
biases, norms and embeddings it was told to leave alone. This subclass
takes the exclusions as a constructor argument and keeps them in
`get_config`.
"""

import keras

# On TensorFlow the optimizer matches `tf.Variable` names, which are paths
# ("block_0/self_attention/qkv/bias:0", with "/replica_1" under
# MirroredStrategy); elsewhere the Keras name ("bias"). Each pattern matches
# the name as a whole path component.
NO_DECAY_NAMES = tuple(
    rf"(?:^|/){name}(?:$|[:/])"
    for name in ("bias", "output_bias", "gamma", "beta", "scale", "embeddings")
)
"""Variable names (regular expressions) without weight decay in pretraining:
biases (also the `output_bias` of keras-hub's `MaskedLMHead`), normalisation
scales and offsets, and embedding tables (token and position). An untied output projection (`reverse_embeddings`) is a matmul
weight and decays."""


@keras.saving.register_keras_serializable(package="keras_llm")
class AdamW(keras.optimizers.AdamW):
    """Keras `AdamW` with its weight-decay exclusions in the config.

    Args:
        no_decay_names: list of regular expressions; a trainable variable
            whose `name` matches one is not decayed (Keras'
            `exclude_from_weight_decay(var_names=...)`). Defaults to `None`
            (decay every variable, as Keras does).
        **kwargs: arguments of `keras.optimizers.AdamW`.

    Example:

    ```python
    import keras_llm

    optimizer = keras_llm.optimizers.AdamW(
        learning_rate=1e-3, weight_decay=0.1,
        no_decay_names=keras_llm.optimizers.NO_DECAY_NAMES,
    )
    ```
    """

    def __init__(self, no_decay_names=None, **kwargs):
        super().__init__(**kwargs)
        self.no_decay_names = list(no_decay_names or [])
        if self.no_decay_names:
            self.exclude_from_weight_decay(var_names=self.no_decay_names)

    def get_config(self):
        config = super().get_config()
        config["no_decay_names"] = self.no_decay_names
        return config
