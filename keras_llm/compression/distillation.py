"""Knowledge distillation for keras_llm models, on `keras.distillation`.

Keras 3.15's `keras.distillation.Distiller` does the training loop: it
freezes the teacher, mixes the student's supervised loss with distillation
losses (`student_loss_weight`), tracks `student_loss`, `distillation_loss`
and `total_loss`, and exposes the trained `student`. `Distiller` here
subclasses it and adds what it lacks for language models:

- masks: Keras' `Distiller.compute_loss` ignores `sample_weight`, so padding
  tokens (and, for MLM, every unmasked position) would count in the loss.
  Here the cross-entropy, the temperature KL, the hidden-state and the
  attention terms are all averaged over the weighted positions only;
- a masked `LogitsDistillation` (`MaskedLogitsDistillation`): Keras' own
  one, given the default string `"kl_divergence"`, resolves it to a
  function (not a `keras.losses.KLDivergence`), so it neither applies the
  softmax nor the T² factor and computes the KL of clipped logits;
- hidden-state transfer between chosen blocks (student block i to teacher
  block j), through a learned `Dense` projection when the widths differ,
  and attention-map transfer (KL or MSE between attention probabilities).
  keras_llm's blocks do not return their attention probabilities, so
  `attention_probabilities` recomputes them from a block's input with the
  block's own weights (dense `MultiHeadAttention` only). Features are read
  from a functional view of each model (its own graph, or the graph of a
  nested backbone such as the BERT inside a classifier), so the student and
  teacher still run once per step;
- `cache_teacher=True`: the teacher runs once over the training data before
  the first epoch; its logits (and mapped features) are kept in memory as
  float16 and fed with each batch afterwards, so the teacher does not run
  again;
- tasks `"clm"` (token-level), `"mlm"` (masked positions only, from the
  sample weights) and `"classification"` (sequence logits), and a clear
  error when student and teacher output sizes (vocabularies) differ.

After training, `distiller.student` is the plain student model (the
projections belong to the distiller), so `distiller.student.save(...)`
gives an ordinary keras_llm model file.
"""

import keras
import numpy as np
from keras import ops

from keras_llm.layers.attention.multi_head_attention import MultiHeadAttention
from keras_llm.layers.attention.multi_head_attention import (
    merge_attention_masks,
)

TASKS = ("clm", "mlm", "classification")
ATTENTION_LOSSES = ("kl", "mse")
_INPUTS = "_distiller_inputs"
_TEACHER = "_distiller_teacher"
_EPSILON = 1e-9


def _owner_and_blocks(model):
    """The functional model whose graph holds `model`'s Transformer blocks
    (the model itself, or a nested backbone), and the blocks."""
    blocks = getattr(model, "blocks", None)
    if blocks:
        return model, list(blocks)
    candidates = [getattr(model, "backbone", None)] + list(
        getattr(model, "layers", [])
    )
    for layer in candidates:
        if isinstance(layer, keras.Model) and getattr(layer, "blocks", None):
            return layer, list(layer.blocks)
    return None, []


def attention_probabilities(block, inputs, padding_mask=None):
    """Attention probabilities of a `TransformerBlock`'s self-attention.

    keras_llm's attention goes through `keras.ops.dot_product_attention`,
    which returns no probabilities; this recomputes them from the block's
    input with the block's own weights (norm, fused QKV projection, rotary
    positions, grouped key/value heads, causal and padding masks), so
    gradients flow into the block.

    Args:
        block: a built `keras_llm.layers.TransformerBlock` with the dense
            `MultiHeadAttention`.
        inputs: `(B, T, hidden_dim)` input of the block.
        padding_mask: `(B, T)` mask of valid keys, or `None`. Defaults to
            `None`.

    Returns:
        `(B, num_heads, T, T)` float32 probabilities (rows sum to 1).

    Raises:
        TypeError: if the block's attention is not the dense one.

    Example:

    ```python
    import numpy as np
    import keras_llm
    from keras_llm.compression.distillation import attention_probabilities

    block = keras_llm.layers.TransformerBlock(
        num_heads=2, intermediate_dim=32, causal=True
    )
    x = np.random.rand(1, 5, 16).astype("float32")
    block(x)
    probs = attention_probabilities(block, x)  # (1, 2, 5, 5)
    ```
    """
    attention = getattr(block, "self_attention", None)
    if type(attention) is not MultiHeadAttention:
        raise TypeError(
            "`attention_probabilities` supports blocks with the dense "
            f"`MultiHeadAttention`; block `{block.name}` has "
            f"{type(attention).__name__}."
        )
    pre = block.normalization == "pre"
    h = block.self_attention_norm(inputs) if pre else inputs
    heads, kv_heads = attention.num_heads, attention._kv_heads
    qkv = attention.qkv_dense(h)
    shape = ops.shape(qkv)
    qkv = ops.reshape(
        qkv, (shape[0], shape[1], heads + 2 * kv_heads, attention.key_dim)
    )
    q, k = qkv[:, :, :heads], qkv[:, :, heads : heads + kv_heads]
    if attention.rotary_max_wavelength is not None:
        q = attention.rotary_embedding(q, start_index=0)
        k = attention.rotary_embedding(k, start_index=0)
    if kv_heads != heads:
        k = ops.repeat(k, heads // kv_heads, axis=2)
    scores = ops.einsum("btnh,bsnh->bnts", q, k)
    scores = ops.cast(scores, "float32") / float(attention.key_dim) ** 0.5
    length = ops.shape(q)[1]
    mask = merge_attention_masks(
        padding_mask,
        None,
        use_causal_mask=block.causal,
        query_length=length,
        key_length=length,
    )
    if mask is not None:
        scores = ops.where(mask, scores, -1e9)
    return ops.softmax(scores, axis=-1)


class _AttentionProbabilities(keras.layers.Layer):
    """Functional-graph node for `attention_probabilities` (views only)."""

    def __init__(self, block, **kwargs):
        super().__init__(**kwargs)
        self.block = block

    def call(self, inputs, padding_mask=None):
        return attention_probabilities(self.block, inputs, padding_mask)

    def compute_output_spec(self, inputs, padding_mask=None):
        b, t = inputs.shape[0], inputs.shape[1]
        heads = self.block.self_attention.num_heads
        return keras.KerasTensor((b, heads, t, t), dtype="float32")


def _feature_view(model, hidden, attention, role):
    """A functional model returning `{"output": model's outputs,
    "hidden_<i>": block i output, "attention_<i>": its probabilities}`."""
    owner, blocks = _owner_and_blocks(model)
    if (hidden or attention) and not blocks:
        raise ValueError(
            f"`Distiller`: the {role} ({type(model).__name__}) shows no "
            "Transformer blocks (`blocks`) for hidden-state or attention "
            "transfer."
        )
    for index in sorted(set(hidden) | set(attention)):
        if not 0 <= index < len(blocks):
            raise ValueError(
                f"`Distiller`: the {role} has {len(blocks)} blocks; block "
                f"{index} is out of range in the layer map."
            )

    def features():
        out = {}
        for i in hidden:
            out[f"hidden_{i}"] = blocks[i].output
        for i in attention:
            node = blocks[i]._inbound_nodes[0]
            out[f"attention_{i}"] = _AttentionProbabilities(
                blocks[i], name=f"{role}_attention_probabilities_{i}"
            )(
                node.arguments.args[0],
                padding_mask=node.arguments.kwargs.get("padding_mask"),
            )
        return out

    if owner is model or not (hidden or attention):
        return keras.Model(
            model.input,
            {"output": model.output, **features()},
            name=f"{role}_view",
        )
    # A nested backbone: re-run the outer graph with the same layers, the
    # backbone replaced by a view that also returns the block features.
    inner = keras.Model(
        owner.input, {"output": owner.output, **features()}, name="inner"
    )
    found = {}

    def call_function(layer, *args, **kwargs):
        if layer is owner:
            result = inner(*args, **kwargs)
            found.update(result)
            return result["output"]
        return layer(*args, **kwargs)

    clone = keras.models.clone_model(
        model, clone_function=lambda layer: layer, call_function=call_function
    )
    found.pop("output")
    return keras.Model(
        clone.input, {"output": clone.output, **found}, name=f"{role}_view"
    )


def _layer_map(value, argument, num_student, num_teacher):
    """A layer map as a list of `(student_block, teacher_block)` pairs."""
    if value is None:
        return []
    if value == "uniform":
        # Student block i reads teacher block ceil((i+1) * Lt / Ls) - 1:
        # the last blocks correspond (TinyBERT's uniform strategy).
        return [
            (i, -(-(i + 1) * num_teacher // num_student) - 1)
            for i in range(num_student)
        ]
    pairs = list(value.items()) if isinstance(value, dict) else list(value)
    ok = all(
        isinstance(p, (tuple, list))
        and len(p) == 2
        and all(isinstance(i, int) and not isinstance(i, bool) for i in p)
        for p in pairs
    )
    if not ok or not pairs:
        raise ValueError(
            f"`Distiller` expects `{argument}` to be 'uniform', a dict "
            "{student_block: teacher_block} or a list of (student_block, "
            f"teacher_block) int pairs. Received: {argument}={value!r}."
        )
    return [tuple(p) for p in pairs]


def _output_size(model, key):
    output = model.output
    if isinstance(output, dict):
        output = output[key]
    return output.shape[-1]


def _pick(structure, key):
    return structure[key] if isinstance(structure, dict) else structure


def _masked_mean(values, weights):
    weights = ops.cast(weights, "float32")
    total = ops.sum(ops.cast(values, "float32") * weights)
    return total / ops.maximum(ops.sum(weights), _EPSILON)


@keras.saving.register_keras_serializable(package="keras_llm")
class MaskedLogitsDistillation(keras.distillation.LogitsDistillation):
    """Temperature KL between teacher and student logits, over masked
    positions, times T².

    `KL(softmax(t / T) || softmax(s / T)) * T²` per position (summed over
    the last axis), averaged over the positions weighted by `sample_weight`
    (all positions when `None`).

    Args:
        temperature: float > 0. Softening temperature `T`. Defaults to
            `2.0`.

    Example:

    ```python
    import numpy as np
    from keras_llm.compression.distillation import MaskedLogitsDistillation

    kd = MaskedLogitsDistillation(temperature=2.0)
    t = np.random.rand(2, 3, 5).astype("float32")
    s = np.random.rand(2, 3, 5).astype("float32")
    loss = kd.compute_loss(t, s, sample_weight=np.array([[1, 1, 0]] * 2))
    ```

    References:
        - [Hinton et al., 2015, Distilling the Knowledge in a Neural
          Network](https://arxiv.org/abs/1503.02531)
    """

    def __init__(self, temperature=2.0):
        if isinstance(temperature, bool):
            raise ValueError(
                "`MaskedLogitsDistillation` expects `temperature` to be a "
                f"positive number. Received: temperature={temperature!r}."
            )
        super().__init__(temperature=temperature, loss="kl_divergence")

    def per_position(self, teacher_logits, student_logits):
        """`KL * T²` per position: shape of the logits without the last
        axis."""
        t = float(self.temperature)
        teacher = ops.cast(teacher_logits, "float32") / t
        student = ops.cast(student_logits, "float32") / t
        log_p = ops.log_softmax(teacher, axis=-1)
        log_q = ops.log_softmax(student, axis=-1)
        kl = ops.sum(ops.exp(log_p) * (log_p - log_q), axis=-1)
        return kl * t * t

    def compute_loss(
        self, teacher_outputs, student_outputs, sample_weight=None, **kwargs
    ):
        kl = self.per_position(teacher_outputs, student_outputs)
        if sample_weight is None:
            return ops.mean(kl)
        return _masked_mean(kl, _broadcast(sample_weight, kl))

    def get_config(self):
        return {"temperature": self.temperature}

    @classmethod
    def from_config(cls, config):
        return cls(**config)


def _broadcast(weights, like):
    """Per-sequence weights `(B,)` spread over positions `(B, T)`."""
    weights = ops.cast(weights, "float32")
    while len(weights.shape) < len(like.shape):
        weights = ops.expand_dims(weights, -1)
    return weights * ops.ones_like(ops.cast(like, "float32"))


@keras.saving.register_keras_serializable(package="keras_llm")
class Distiller(keras.distillation.Distiller):
    """Teacher-to-student distillation for CLM, MLM and classification.

    A `keras.distillation.Distiller` whose loss is

    `alpha * CE(labels, student) + (1 - alpha) * KL_T(teacher || student) *
    T² + hidden_loss_weight * MSE(proj(student block i), teacher block j) +
    attention_loss_weight * D(student attention i, teacher attention j)`,

    every term averaged over the positions that count: the sample weights
    (padding or, for MLM, unmasked positions get weight 0) and the labels
    equal to `ignore_class`; the hidden and attention terms over the real
    tokens (`padding_mask` in dict inputs, otherwise the CLM token weights).

    Data: `fit(x, y, sample_weight=...)` as for the student alone.
    - `"clm"`: `x` token ids `(B, T)`, `y` next tokens `(B, T)`, logits
      `(B, T, V)`; `sample_weight` `(B, T)` (0 on padding) or `(B,)`.
    - `"mlm"`: logits over mask slots `(B, P, V)` (a dict output such as
      `BertPretrainer`'s is read at `output_key`), `y` the masked ids,
      `sample_weight` the mask weights (required: only masked positions
      count).
    - `"classification"`: logits `(B, C)`, `y` `(B,)`.

    Args:
        teacher: a trained `keras.Model` (frozen here).
        student: the `keras.Model` to train; same output size.
        task: `"clm"`, `"mlm"` or `"classification"`. Defaults to `"clm"`.
        temperature: float > 0, the KL temperature `T`. Defaults to `2.0`.
        alpha: float in [0, 1], weight of the ground-truth cross-entropy
            (`student_loss_weight` of Keras' Distiller). Defaults to `0.5`.
        hidden_layer_map: `None`, `"uniform"`, a dict `{student_block:
            teacher_block}` or a list of pairs: hidden-state transfer. A
            `Dense` projection (trained, owned by the distiller) maps the
            student width to the teacher's where they differ. Defaults to
            `None`.
        hidden_loss_weight: float. Defaults to `1.0`.
        attention_layer_map: like `hidden_layer_map`, for attention maps
            (dense attention). When the head counts differ, head-averaged
            maps are compared. Defaults to `None`.
        attention_loss: `"kl"` (teacher rows against student rows) or
            `"mse"`. Defaults to `"kl"`.
        attention_loss_weight: float. Defaults to `1.0`.
        cache_teacher: bool. Run the teacher once over the training data in
            `fit` and reuse its outputs (float16, in memory) every epoch.
            Needs array inputs or a finite dataset of equal-shaped batches.
            Defaults to `False`.
        output_key: key of the logits when the models return a dict.
            Defaults to `"mlm"`.
        ignore_class: int or `None`. Label id that never counts (e.g. a
            padding id), on top of `sample_weight`. Defaults to `None`.
        name: model name. Defaults to `"distiller"`.
        **kwargs: `keras.Model` arguments.

    Raises:
        ValueError: on a bad option, on a layer map naming missing blocks,
            and when student and teacher output sizes (vocabularies)
            differ.

    Example:

    ```python
    import numpy as np
    import keras_llm
    from keras_llm.compression.distillation import Distiller

    teacher = keras_llm.models.GPT(
        vocabulary_size=20, num_layers=2, num_heads=2, hidden_dim=16,
        max_sequence_length=8,
    )
    student = keras_llm.models.GPT(
        vocabulary_size=20, num_layers=1, num_heads=2, hidden_dim=8,
        max_sequence_length=8,
    )
    tokens = np.random.randint(1, 20, (8, 9)).astype("int32")
    distiller = Distiller(
        teacher, student, temperature=2.0, alpha=0.5,
        hidden_layer_map={0: 1}, attention_layer_map={0: 1},
        cache_teacher=True,
    )
    distiller.compile(optimizer="adam")
    distiller.fit(tokens[:, :-1], tokens[:, 1:], epochs=2, batch_size=4,
                  verbose=0)
    small = distiller.student  # a plain GPT
    ```

    References:
        - [Hinton et al., 2015](https://arxiv.org/abs/1503.02531)
        - [Jiao et al., 2020, TinyBERT](https://arxiv.org/abs/1909.10351)
        - [Sanh et al., 2019, DistilBERT](https://arxiv.org/abs/1910.01108)
    """

    def __init__(
        self,
        teacher,
        student,
        task="clm",
        temperature=2.0,
        alpha=0.5,
        hidden_layer_map=None,
        hidden_loss_weight=1.0,
        attention_layer_map=None,
        attention_loss="kl",
        attention_loss_weight=1.0,
        cache_teacher=False,
        output_key="mlm",
        ignore_class=None,
        name="distiller",
        **kwargs,
    ):
        if task not in TASKS:
            raise ValueError(
                f"`Distiller` expects `task` to be one of {TASKS}. "
                f"Received: task={task!r}."
            )
        if attention_loss not in ATTENTION_LOSSES:
            raise ValueError(
                "`Distiller` expects `attention_loss` to be one of "
                f"{ATTENTION_LOSSES}. Received: attention_loss="
                f"{attention_loss!r}."
            )
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)):
            raise ValueError(
                "`Distiller` expects `alpha` to be a number in [0, 1]. "
                f"Received: alpha={alpha!r}."
            )
        for model, role in ((teacher, "teacher"), (student, "student")):
            if not isinstance(model, keras.Model) or not model.built:
                raise ValueError(
                    f"`Distiller` expects the {role} to be a built "
                    f"functional keras.Model. Received: {model!r}."
                )
        t_size = _output_size(teacher, output_key)
        s_size = _output_size(student, output_key)
        if t_size != s_size:
            raise ValueError(
                "`Distiller`: the student and teacher output sizes differ "
                f"(student {s_size}, teacher {t_size}); logits distillation "
                "needs the same vocabulary (or classes) in both."
            )
        super().__init__(
            teacher=teacher,
            student=student,
            distillation_losses=MaskedLogitsDistillation(temperature),
            student_loss_weight=float(alpha),
            name=name,
            **kwargs,
        )
        self.task = task
        self.temperature = float(temperature)
        self.alpha = float(alpha)
        self.hidden_loss_weight = float(hidden_loss_weight)
        self.attention_loss = attention_loss
        self.attention_loss_weight = float(attention_loss_weight)
        self.cache_teacher = bool(cache_teacher)
        self.output_key = output_key
        self.ignore_class = ignore_class
        self._hidden_map_arg = hidden_layer_map
        self._attention_map_arg = attention_layer_map

        _, s_blocks = _owner_and_blocks(student)
        _, t_blocks = _owner_and_blocks(teacher)
        self.hidden_layer_map = _layer_map(
            hidden_layer_map, "hidden_layer_map", len(s_blocks), len(t_blocks)
        )
        self.attention_layer_map = _layer_map(
            attention_layer_map,
            "attention_layer_map",
            len(s_blocks),
            len(t_blocks),
        )
        s_hidden = [i for i, _ in self.hidden_layer_map]
        t_hidden = [j for _, j in self.hidden_layer_map]
        s_att = [i for i, _ in self.attention_layer_map]
        t_att = [j for _, j in self.attention_layer_map]
        self.student_view = _feature_view(
            student, sorted(set(s_hidden)), sorted(set(s_att)), "student"
        )
        self.teacher_view = _feature_view(
            teacher, sorted(set(t_hidden)), sorted(set(t_att)), "teacher"
        )
        self.teacher_view.trainable = False

        # One projection per mapped pair whose widths differ.
        self.hidden_projections = []
        self._projection_index = {}
        for i, j in self.hidden_layer_map:
            s_width = s_blocks[i].output.shape[-1]
            t_width = t_blocks[j].output.shape[-1]
            if s_width != t_width:
                projection = keras.layers.Dense(
                    t_width, name=f"hidden_projection_{i}_{j}"
                )
                projection.build((None, None, s_width))
                self._projection_index[(i, j)] = len(self.hidden_projections)
                self.hidden_projections.append(projection)

        self.hidden_loss_tracker = keras.metrics.Mean(name="hidden_loss")
        self.attention_loss_tracker = keras.metrics.Mean(name="attention_loss")
        self.teacher_cache = None
        object.__setattr__(self, "_student_features", None)

    # --- losses ---

    def compile(self, optimizer="adam", loss="auto", metrics=None, **kwargs):
        """Configures training.

        Args:
            optimizer: a Keras optimizer or its name. Defaults to `"adam"`.
            loss: the student's supervised loss: `"auto"` for a sparse
                cross-entropy on logits averaged over the weighted
                positions, or a Keras loss (called with the weights).
                Defaults to `"auto"`.
            metrics: metrics of the student's outputs. Defaults to `None`.
            **kwargs: other `keras.Model.compile` arguments.
        """
        self._auto_loss = loss == "auto"
        if self._auto_loss:
            loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        super().compile(
            optimizer=optimizer, loss=loss, metrics=metrics, **kwargs
        )

    def _needs_features(self):
        return bool(self.hidden_layer_map or self.attention_layer_map)

    def call(self, inputs, training=None):
        if isinstance(inputs, dict) and _INPUTS in inputs:
            inputs = inputs[_INPUTS]
        if not self._needs_features():
            return self.student(inputs, training=training)
        outputs = self.student_view(inputs, training=training)
        # Read by `compute_loss` in the same step (same trace), so the
        # student runs once; set past Keras' attribute tracking.
        object.__setattr__(self, "_student_features", outputs)
        return outputs["output"]

    def _teacher_features(self, x):
        if isinstance(x, dict) and _TEACHER in x:
            cached = x[_TEACHER]
            return {k: ops.cast(v, "float32") for k, v in cached.items()}
        inputs = x[_INPUTS] if isinstance(x, dict) and _INPUTS in x else x
        out = self.teacher_view(inputs, training=False)
        out = dict(out)
        out["output"] = _pick(out["output"], self.output_key)
        return out

    def _weights(self, y, sample_weight, logits):
        like = logits[..., 0]
        if sample_weight is None:
            if self.task == "mlm":
                raise ValueError(
                    "`Distiller(task='mlm')` needs `sample_weight` (the mask "
                    "weights), so that only the masked positions count."
                )
            weights = ops.ones_like(ops.cast(like, "float32"))
        else:
            weights = _broadcast(sample_weight, like)
        if self.ignore_class is not None and y is not None:
            keep = ops.not_equal(y, self.ignore_class)
            weights = weights * ops.cast(keep, "float32")
        return weights

    def _sequence_mask(self, x, weights, like):
        inputs = x[_INPUTS] if isinstance(x, dict) and _INPUTS in x else x
        if isinstance(inputs, dict) and "padding_mask" in inputs:
            return ops.cast(inputs["padding_mask"], "float32")
        if self.task == "clm":
            return weights
        if isinstance(inputs, dict) and "token_ids" in inputs:
            return ops.cast(ops.not_equal(inputs["token_ids"], 0), "float32")
        return ops.ones_like(ops.cast(like[..., 0], "float32"))

    def _hidden_loss(self, student, teacher, mask):
        terms = []
        for i, j in self.hidden_layer_map:
            hs = ops.cast(student[f"hidden_{i}"], "float32")
            ht = ops.cast(teacher[f"hidden_{j}"], "float32")
            if (i, j) in self._projection_index:
                projection = self.hidden_projections[
                    self._projection_index[(i, j)]
                ]
                hs = ops.cast(projection(hs), "float32")
            mse = ops.mean(ops.square(hs - ht), axis=-1)
            terms.append(_masked_mean(mse, mask))
        return ops.mean(ops.stack(terms))

    def _attention_loss(self, student, teacher, mask):
        terms = []
        for i, j in self.attention_layer_map:
            ps = ops.cast(student[f"attention_{i}"], "float32")
            pt = ops.cast(teacher[f"attention_{j}"], "float32")
            if ps.shape[1] != pt.shape[1]:
                ps = ops.mean(ps, axis=1, keepdims=True)
                pt = ops.mean(pt, axis=1, keepdims=True)
            if self.attention_loss == "kl":
                log_pt = ops.log(ops.clip(pt, _EPSILON, 1.0))
                log_ps = ops.log(ops.clip(ps, _EPSILON, 1.0))
                per = ops.sum(pt * (log_pt - log_ps), axis=-1)
            else:
                per = ops.mean(ops.square(ps - pt), axis=-1)
            per = ops.mean(per, axis=1)  # heads -> (B, T) queries
            terms.append(_masked_mean(per, mask))
        return ops.mean(ops.stack(terms))

    def distillation_terms(self, x, y=None, y_pred=None, sample_weight=None):
        """The loss terms of one batch, unweighted.

        Args:
            x: inputs of the batch.
            y: labels, or `None`.
            y_pred: the student's outputs, or `None` to compute them.
            sample_weight: weights, as in `fit`, or `None`.

        Returns:
            A dict of scalars: `student_loss` (cross-entropy),
            `distillation_loss` (`KL * T²`), `hidden_loss`,
            `attention_loss` (0.0 when unused) and `total_loss`.
        """
        stale = self._needs_features() and self._student_features is None
        if y_pred is None or stale:
            y_pred = self(x, training=False)
        features = self._student_features or {}
        object.__setattr__(self, "_student_features", None)
        logits = _pick(y_pred, self.output_key)
        labels = _pick(y, self.output_key) if y is not None else None
        weight = (
            _pick(sample_weight, self.output_key)
            if sample_weight is not None
            else None
        )
        weights = self._weights(labels, weight, logits)

        student_loss = ops.convert_to_tensor(0.0)
        if labels is not None and self.alpha > 0:
            if getattr(self, "_auto_loss", True):
                ce = keras.losses.sparse_categorical_crossentropy(
                    labels, logits, from_logits=True
                )
                student_loss = _masked_mean(ce, weights)
            else:
                student_loss = self._student_loss(
                    labels, logits, sample_weight=weights
                )
        teacher = self._teacher_features(x)
        kd = self.distillation_losses[0].compute_loss(
            teacher["output"], logits, sample_weight=weights
        )
        total = self.alpha * student_loss + (1.0 - self.alpha) * kd
        hidden = attention = ops.convert_to_tensor(0.0)
        if self._needs_features():
            mask = self._sequence_mask(x, weights, logits)
            if self.hidden_layer_map:
                hidden = self._hidden_loss(features, teacher, mask)
                total = total + self.hidden_loss_weight * hidden
            if self.attention_layer_map:
                attention = self._attention_loss(features, teacher, mask)
                total = total + self.attention_loss_weight * attention
        return {
            "student_loss": student_loss,
            "distillation_loss": kd,
            "hidden_loss": hidden,
            "attention_loss": attention,
            "total_loss": total,
        }

    def compute_loss(
        self, x=None, y=None, y_pred=None, sample_weight=None, training=True
    ):
        terms = self.distillation_terms(x, y, y_pred, sample_weight)
        self.student_loss_tracker.update_state(terms["student_loss"])
        self.distillation_loss_tracker.update_state(terms["distillation_loss"])
        self.hidden_loss_tracker.update_state(terms["hidden_loss"])
        self.attention_loss_tracker.update_state(terms["attention_loss"])
        self.total_loss_tracker.update_state(terms["total_loss"])
        return terms["total_loss"]

    def reset_metrics(self):
        super().reset_metrics()
        self.hidden_loss_tracker.reset_state()
        self.attention_loss_tracker.reset_state()

    # --- teacher cache ---

    def build_teacher_cache(self, x, batch_size=32):
        """Runs the teacher once over `x` and keeps its outputs as float16.

        Args:
            x: the training inputs (arrays or a dict of arrays).
            batch_size: int. Teacher batch size. Defaults to `32`.

        Returns:
            A dict of float16 numpy arrays: `"output"` (the logits) and the
            mapped teacher features.
        """
        outputs = self.teacher_view.predict(x, batch_size=batch_size, verbose=0)
        outputs = dict(outputs)
        outputs["output"] = _pick(outputs["output"], self.output_key)
        return {k: np.asarray(v).astype("float16") for k, v in outputs.items()}

    def fit(
        self,
        x=None,
        y=None,
        batch_size=None,
        epochs=1,
        sample_weight=None,
        **kwargs,
    ):
        """`keras.Model.fit`; with `cache_teacher=True` the teacher runs
        once over `x` first and its outputs ride along with each batch.

        A `tf.data.Dataset` (or other iterable of `(x, y[, sample_weight])`
        batches) is read into memory once for the cache; its batch size is
        kept and its batches are shuffled by `fit` each epoch.
        """
        if not self.cache_teacher:
            return super().fit(
                x, y, batch_size=batch_size, epochs=epochs,
                sample_weight=sample_weight, **kwargs,
            )  # fmt: skip
        if not _is_arrays(x):
            x, y, sample_weight, batch_size = _materialize(x)
        batch_size = batch_size or 32
        self.teacher_cache = self.build_teacher_cache(x, batch_size)
        packed = {_INPUTS: x, _TEACHER: self.teacher_cache}
        return super().fit(
            packed, y, batch_size=batch_size, epochs=epochs,
            sample_weight=sample_weight, **kwargs,
        )  # fmt: skip

    # --- serialization ---

    def get_config(self):
        config = keras.Model.get_config(self)
        config.update(
            {
                "teacher": keras.saving.serialize_keras_object(self.teacher),
                "student": keras.saving.serialize_keras_object(self.student),
                "task": self.task,
                "temperature": self.temperature,
                "alpha": self.alpha,
                "hidden_layer_map": self._hidden_map_arg,
                "hidden_loss_weight": self.hidden_loss_weight,
                "attention_layer_map": self._attention_map_arg,
                "attention_loss": self.attention_loss,
                "attention_loss_weight": self.attention_loss_weight,
                "cache_teacher": self.cache_teacher,
                "output_key": self.output_key,
                "ignore_class": self.ignore_class,
            }
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        for role in ("teacher", "student"):
            config[role] = keras.saving.deserialize_keras_object(config[role])
        return cls(**config)


def _is_arrays(x):
    leaves = keras.tree.flatten(x) if x is not None else []
    return bool(leaves) and all(isinstance(v, np.ndarray) for v in leaves)


def _materialize(dataset):
    """Reads a finite iterable of `(x, y[, sample_weight])` batches into
    concatenated numpy arrays; returns `(x, y, sample_weight, batch_size)`.
    """
    batches = []
    for batch in dataset:
        batch = tuple(batch) if isinstance(batch, (tuple, list)) else (batch,)
        batches.append(keras.tree.map_structure(np.asarray, batch))
    if not batches:
        raise ValueError("`Distiller.fit` got an empty dataset to cache.")
    try:
        joined = keras.tree.map_structure(
            lambda *parts: np.concatenate(parts, axis=0), *batches
        )
    except ValueError as error:
        raise ValueError(
            "`Distiller(cache_teacher=True)` needs batches of equal shapes "
            f"(pad to a fixed length): {error}"
        ) from None
    batch_size = len(keras.tree.flatten(batches[0][0])[0])
    joined = tuple(joined) + (None,) * (3 - len(joined))
    return joined[0], joined[1], joined[2], batch_size
