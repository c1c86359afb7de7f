"""Tensor-parallel layouts of keras_llm models for `keras.distribution`.

Keras does the sharding: `keras.distribution.ModelParallel` places each
variable by the `keras.distribution.LayoutMap` entry its path matches, and on
the JAX backend XLA's GSPMD partitions the computation to fit and inserts the
collectives. The only model-specific part is which variable is split along
which axis, and that is written here, after keras-hub's
`Backbone.get_layout_map` (Gemma, Llama): regexes on variable paths.

The split is Megatron-style (Shoeybi et al., 2019): the first matmul of
each pair is split on its output (columns), the second on its input (rows),
so a block needs one all-reduce after attention and one after the
feed-forward network.

| variable | shape | split on "model" |
|---|---|---|
| `token_embedding/embeddings` | `(vocab, hidden)` | hidden |
| `token_embedding/reverse_embeddings` | `(hidden, vocab)` | hidden |
| fused `self_attention/qkv/kernel` | `(hidden, (H + 2 KV) d)` | output |
| `cross_attention/query|key_value/kernel` | `(hidden, n d)` | output |
| `self|cross_attention/output/kernel` | `(H d, hidden)` | input |
| Keras-MHA style `query|key|value/kernel` | `(hidden, H, d)` | heads |
| Keras-MHA style `attention_output/kernel` | `(H, d, hidden)` | heads |
| `feed_forward/up/kernel` | `(hidden, ffn)` | output |
| `feed_forward/down/kernel` | `(ffn, hidden)` | input |

Everything else (norms, biases, position and segment embeddings, heads)
is replicated. The embedding tables are split on the hidden axis, not the
vocabulary, because JAX rejects a split that does not divide the axis and
vocabularies (65, 50257) rarely divide by the model axis; `hidden_dim`,
`num_heads` and `intermediate_dim` must be divisible by it.

On the TensorFlow backend `keras.distribution` is a silent no-op in Keras
3.15 (variables stay whole on one device), so `get_layout_map` warns there.
"""

import warnings

import keras

# Path prefixes of the blocks of GPT/BERT ("block_3") and EncoderDecoder
# ("encoder_block_0", "decoder_block_1"); `(?:.*/)?` lets a model nested in
# another layer match too. LayoutMap uses `re.fullmatch` and refuses a path
# that matches two keys, so the rules are mutually exclusive.
_PREFIX = r"(?:.*/)?"
_BLOCK = _PREFIX + r"(?:encoder_|decoder_)?block_\d+/"

# (regex on `variable.path`, axes with "model" marking the split axis).
LAYOUT_RULES = (
    (_PREFIX + r"(?:encoder_|decoder_)?token_embedding/embeddings",
     (None, "model")),
    (_PREFIX + r"(?:encoder_|decoder_)?token_embedding/reverse_embeddings",
     ("model", None)),
    # keras_llm's own attention ("dense"): fused q/k/v, 2-D kernels.
    (_BLOCK + r"self_attention/qkv/kernel", (None, "model")),
    (_BLOCK + r"cross_attention/(?:query|key_value)/kernel", (None, "model")),
    (_BLOCK + r"(?:self|cross)_attention/output/kernel", ("model", None)),
    # Attentions built on keras.layers.MultiHeadAttention ("mha",
    # "sliding_window", "block_sparse", "axial", "lsh", ...): 3-D einsum
    # kernels with a heads axis.
    (_BLOCK + r"self_attention/(?:query|key|value)/kernel",
     (None, "model", None)),
    (_BLOCK + r"self_attention/attention_output/kernel",
     ("model", None, None)),
    (_BLOCK + r"feed_forward/up/kernel", (None, "model")),
    (_BLOCK + r"feed_forward/down/kernel", ("model", None)),
)  # fmt: skip


def default_device_mesh(
    model_parallel_dim_name="model",
    data_parallel_dim_name="batch",
    devices=None,
):
    """A 2-D `(batch, model)` device mesh with model parallelism of 2.

    Args:
        model_parallel_dim_name: name of the mesh axis the weights are split
            on. Defaults to `"model"`.
        data_parallel_dim_name: name of the mesh axis the batch is split on.
            Defaults to `"batch"`.
        devices: list of device names, or `None` for
            `keras.distribution.list_devices()`. Defaults to `None`.

    Returns:
        A `keras.distribution.DeviceMesh` of shape `(n // 2, 2)` over `n`
        devices when `n` is even, else `(n, 1)` (pure data parallel).

    Example:

    ```python
    from keras_llm.models.layout import default_device_mesh

    mesh = default_device_mesh()
    mesh.axis_names  # ['batch', 'model']
    ```
    """
    devices = list(devices or keras.distribution.list_devices())
    model = 2 if len(devices) % 2 == 0 else 1
    return keras.distribution.DeviceMesh(
        shape=(len(devices) // model, model),
        axis_names=[data_parallel_dim_name, model_parallel_dim_name],
        devices=devices,
    )


def get_layout_map(
    device_mesh=None,
    model_parallel_dim_name="model",
    data_parallel_dim_name="batch",
    owner="get_layout_map",
):
    """A `keras.distribution.LayoutMap` splitting keras_llm models' kernels.

    The map serves `GPT`, `BERT` (and `BertPretrainer`) and `EncoderDecoder`
    with any registered attention; see the module docstring for the rules.
    Pass it to `keras.distribution.ModelParallel` and build the model under
    that distribution (JAX backend).

    Args:
        device_mesh: a `keras.distribution.DeviceMesh` with both axis names,
            or `None` for `default_device_mesh()`. Defaults to `None`.
        model_parallel_dim_name: mesh axis the weights are split on.
            Defaults to `"model"`.
        data_parallel_dim_name: mesh axis the batch is split on (checked to
            exist; weights are not split on it). Defaults to `"batch"`.
        owner: name used in error messages. Defaults to `"get_layout_map"`.

    Returns:
        A `keras.distribution.LayoutMap` over `device_mesh`.

    Raises:
        TypeError: if `device_mesh` is not a `DeviceMesh`.
        ValueError: if an axis name is not in the mesh.

    Example:

    ```python
    import keras
    import keras_llm
    from keras_llm.models.layout import get_layout_map

    distribution = keras.distribution.ModelParallel(
        layout_map=get_layout_map(), batch_dim_name="batch"
    )
    with distribution.scope():
        model = keras_llm.models.GPT(
            vocabulary_size=50, num_layers=1, num_heads=2, hidden_dim=16,
            max_sequence_length=16,
        )
    ```
    """
    if device_mesh is None:
        device_mesh = default_device_mesh(
            model_parallel_dim_name, data_parallel_dim_name
        )
    if not isinstance(device_mesh, keras.distribution.DeviceMesh):
        raise TypeError(
            f"`{owner}` expects `device_mesh` to be a "
            "`keras.distribution.DeviceMesh` or `None`. Received: "
            f"{type(device_mesh).__name__}."
        )
    for argument, name in (
        ("model_parallel_dim_name", model_parallel_dim_name),
        ("data_parallel_dim_name", data_parallel_dim_name),
    ):
        if name not in device_mesh.axis_names:
            raise ValueError(
                f"`{owner}` got {argument}={name!r}, which is not an axis "
                f"of the device mesh {list(device_mesh.axis_names)}."
            )
    if keras.backend.backend() != "jax":
        warnings.warn(
            f"`{owner}`: keras.distribution shards variables only on the JAX "
            f"backend; on {keras.backend.backend()!r} (Keras 3.15) "
            "ModelParallel is a silent no-op and every variable stays whole "
            "on one device. Set KERAS_BACKEND=jax to shard.",
            stacklevel=3,
        )
    layout_map = keras.distribution.LayoutMap(device_mesh)
    for pattern, axes in LAYOUT_RULES:
        layout_map[pattern] = tuple(
            model_parallel_dim_name if axis == "model" else axis
            for axis in axes
        )
    return layout_map


class LayoutMapMixin:
    """Gives a keras_llm model class `get_layout_map()`."""

    @classmethod
    def get_layout_map(
        cls,
        device_mesh=None,
        model_parallel_dim_name="model",
        data_parallel_dim_name="batch",
    ):
        """A `keras.distribution.LayoutMap` for tensor parallelism on JAX.

        Attention and feed-forward kernels and the token embedding are split
        over the model axis Megatron-style, the rest (norms, biases,
        position embeddings, pretraining heads) is replicated; the rules are
        `keras_llm.models.layout.LAYOUT_RULES`, shared by `GPT`, `BERT` and
        `EncoderDecoder`. On the TensorFlow backend Keras 3.15 ignores it (a
        warning says so).

        Args:
            device_mesh: a `keras.distribution.DeviceMesh`, or `None` for a
                `(batch, model)` mesh over all devices with a model axis of
                2 (1 on an odd device count). Defaults to `None`.
            model_parallel_dim_name: mesh axis the weights are split on.
                Defaults to `"model"`.
            data_parallel_dim_name: mesh axis the batch is split on.
                Defaults to `"batch"`.

        Returns:
            A `keras.distribution.LayoutMap`.

        Example:

        ```python
        import keras
        import keras_llm

        distribution = keras.distribution.ModelParallel(
            layout_map=keras_llm.models.GPT.get_layout_map(),
            batch_dim_name="batch",
        )
        with distribution.scope():
            model = keras_llm.models.GPT(
                vocabulary_size=50, num_layers=1, num_heads=2, hidden_dim=16,
                max_sequence_length=16,
            )
        ```
        """
        return get_layout_map(
            device_mesh,
            model_parallel_dim_name,
            data_parallel_dim_name,
            owner=f"{cls.__name__}.get_layout_map",
        )
