"""Moving trained weights between attention layers of different kinds.

A model pretrained with dense attention can switch to an efficient attention
for longer inputs without retraining (as Longformer started from RoBERTa).
Every layer here is described in one common layout, that of
`keras.layers.MultiHeadAttention`: `query`, `key`, `value` kernels
`(dim, heads, head_dim)` with biases `(heads, head_dim)`, and an output
kernel `(heads, head_dim, dim)` with bias `(dim,)`. Our fused dense layer
(`MultiHeadAttention`, one `qkv` projection) converts to and from it; the
layers built on `BaseAttention` hold it directly. `LSHAttention` ties query
and key (Reformer): it takes the `query` projection for both and ignores
`key`.
"""

import numpy as np

from keras_llm.layers.attention.multi_head_attention import MultiHeadAttention

_PARTS = ("query", "key", "value", "output")


def _kernel_and_bias(dense):
    weights = [np.asarray(w) for w in dense.get_weights()]
    return weights[0], (weights[1] if len(weights) > 1 else None)


def attention_weights(layer):
    """The weights of a built attention layer in Keras MHA layout.

    Returns:
        A dict from `"query"`, `"key"`, `"value"`, `"output"` to
        `(kernel, bias or None)` numpy pairs; parts a layer lacks (the `key`
        of `LSHAttention`) are absent.
    """
    if isinstance(layer, MultiHeadAttention):
        heads, kv_heads, dim = layer.num_heads, layer._kv_heads, layer.key_dim
        if kv_heads != heads:
            raise ValueError(
                "Grouped-query attention weights have no Keras "
                f"MultiHeadAttention layout ({heads} query heads, {kv_heads} "
                "key/value heads)."
            )
        if not layer._self_attention:
            raise ValueError("Only self-attention weights can be converted.")
        kernel, bias = _kernel_and_bias(layer.qkv_dense)
        kernel = kernel.reshape(kernel.shape[0], 3 * heads, dim)
        if bias is not None:
            bias = bias.reshape(3 * heads, dim)
        out = {}
        for i, part in enumerate(_PARTS[:3]):
            rows = slice(i * heads, (i + 1) * heads)
            out[part] = (
                kernel[:, rows],
                None if bias is None else bias[rows],
            )
        o_kernel, o_bias = _kernel_and_bias(layer.output_dense)
        out["output"] = (o_kernel.reshape(heads, dim, -1), o_bias)
        return out
    out = {}
    for part in _PARTS:
        dense = getattr(layer, f"_{part}_dense", None)
        if dense is not None:
            out[part] = _kernel_and_bias(dense)
    return out


def set_attention_weights(layer, weights):
    """Loads Keras-MHA-layout `weights` (see `attention_weights`) into `layer`."""
    if isinstance(layer, MultiHeadAttention):
        if "key" not in weights:
            raise ValueError(
                "Dense attention needs separate key weights; these weights "
                "tie query and key (LSH)."
            )
        kernels = [weights[p][0] for p in _PARTS[:3]]
        kernel = np.concatenate(kernels, axis=1)
        values = [kernel.reshape(kernel.shape[0], -1)]
        if weights["query"][1] is not None:
            bias = np.concatenate([weights[p][1] for p in _PARTS[:3]], 0)
            values.append(bias.reshape(-1))
        layer.qkv_dense.set_weights(values)
        o_kernel, o_bias = weights["output"]
        values = [o_kernel.reshape(-1, o_kernel.shape[-1])]
        if o_bias is not None:
            values.append(o_bias)
        layer.output_dense.set_weights(values)
        return
    for part in _PARTS:
        dense = getattr(layer, f"_{part}_dense", None)
        if dense is None:
            continue
        kernel, bias = weights[part]
        dense.set_weights([kernel] if bias is None else [kernel, bias])


def transfer_attention_weights(source, target):
    """Copies the trained weights of one built attention layer into another
    of possibly another kind (dense, sliding-window, block-sparse, axial,
    LSH). Both must have the same heads, head size and width."""
    set_attention_weights(target, attention_weights(source))
