"""Low-rank factorization of Dense and EinsumDense kernels (truncated SVD).

Keras 3, keras-hub and tensorflow-model-optimization have no low-rank
factorization, so this module is ours; the SVD itself is numpy's
(`numpy.linalg.svd` in float64) and the factorized layers compute with
`keras.ops` only. A kernel `W` (`m x n`, an EinsumDense kernel reshaped to
input axes x output axes) is replaced by `A @ B` with
`A = U_r diag(s_r)^1/2` (`m x r`) and `B = diag(s_r)^1/2 V_r^T` (`r x n`):
by Eckart-Young this is the best rank-`r` approximation in Frobenius norm,
with error `sqrt(sum_{i>r} s_i^2)`. A layer is factorized only when
`r (m + n)` is smaller than `m n` (by at least `min_reduction`).

How the layers are replaced:

- Functional and Sequential models (plain `keras.Model(inputs, outputs)`):
  `keras.models.clone_model` with a `clone_function` that returns the
  low-rank layer for a target and a copy (same weights) for the rest. The
  result is a plain functional model.
- Layers nested inside other layers (keras_llm's `GPT`, whose blocks build
  their `Dense` projections in `build()`, or any subclassed model): the
  model is copied (config round trip plus weights), the attribute holding
  each target is swapped for the low-rank layer (Keras' layer tracker is
  updated in place so weights, training and saving see the new layer), and
  the copy is wrapped in `LowRankModel`. Rebuilding `GPT` from its config
  would bring the dense layers back, so `LowRankModel.get_config` records
  the base model's config plus where each low-rank layer goes and its
  config; loading rebuilds the base model and swaps the same attributes
  before the weights are read. The wrapper calls the base model, so it
  trains in `fit`, saves to and loads from `.keras`, and forwards
  `generate` to a base model that has one.
"""

import fnmatch
import string

import keras
import numpy as np
from keras import ops

_DENSE_TYPES = (keras.layers.Dense, keras.layers.EinsumDense)


# --------------------------------------------------------------------------
# Layers
# --------------------------------------------------------------------------


@keras.saving.register_keras_serializable(package="keras_llm")
class LowRankDense(keras.layers.Layer):
    """Dense layer whose kernel is the product of two thin factors.

    Computes `activation((inputs @ left_kernel) @ right_kernel + bias)` with
    `left_kernel` of shape `(input_dim, rank)` and `right_kernel` of shape
    `(rank, units)`: `rank * (input_dim + units)` kernel parameters instead
    of `input_dim * units`. `LowRankDense.from_dense` builds one from a
    trained `keras.layers.Dense` by truncated SVD.

    Args:
        units: int. Output width.
        rank: int. Inner width of the factorization.
        activation: activation name or callable, as in `Dense`. Defaults to
            `None`.
        use_bias: bool. Whether to add a bias. Defaults to `True`.
        kernel_initializer: initializer of both factors. Defaults to
            `"glorot_uniform"`.
        bias_initializer: initializer of the bias. Defaults to `"zeros"`.
        **kwargs: standard `keras.layers.Layer` arguments.

    Example:

    ```python
    import numpy as np
    import keras
    from keras_llm.compression.low_rank import LowRankDense

    dense = keras.layers.Dense(8)
    dense.build((None, 16))
    low = LowRankDense.from_dense(dense, rank=4)
    y = low(np.ones((2, 16), "float32"))  # (2, 8)
    ```

    References:
        - [Eckart & Young, 1936](https://doi.org/10.1007/BF02288367)
        - [Denton et al., 2014](https://arxiv.org/abs/1404.0736)
    """

    def __init__(
        self,
        units,
        rank,
        activation=None,
        use_bias=True,
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        **kwargs,
    ):
        super().__init__(**kwargs)
        _check_positive(type(self).__name__, "units", units)
        _check_positive(type(self).__name__, "rank", rank)
        self.units = units
        self.rank = rank
        self.activation = keras.activations.get(activation)
        self.use_bias = use_bias
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)

    def build(self, input_shape):
        input_dim = input_shape[-1]
        if input_dim is None:
            raise ValueError(
                f"`{self.name}` needs a known last input dimension. "
                f"Received shape {input_shape}."
            )
        self.left_kernel = self.add_weight(
            name="left_kernel",
            shape=(input_dim, self.rank),
            initializer=self.kernel_initializer,
        )
        self.right_kernel = self.add_weight(
            name="right_kernel",
            shape=(self.rank, self.units),
            initializer=self.kernel_initializer,
        )
        self.bias = None
        if self.use_bias:
            self.bias = self.add_weight(
                name="bias",
                shape=(self.units,),
                initializer=self.bias_initializer,
            )
        self.built = True

    def call(self, inputs):
        x = ops.matmul(ops.matmul(inputs, self.left_kernel), self.right_kernel)
        if self.bias is not None:
            x = ops.add(x, self.bias)
        if self.activation is not None:
            x = self.activation(x)
        return x

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.units,)

    @property
    def kernel(self):
        """The dense kernel `left_kernel @ right_kernel`."""
        return ops.matmul(self.left_kernel, self.right_kernel)

    @classmethod
    def from_dense(cls, layer, rank):
        """A built `LowRankDense` equal to `layer` up to a rank-`rank` SVD.

        Args:
            layer: a built `keras.layers.Dense`.
            rank: int, at most `min(kernel.shape)`.

        Returns:
            A built `LowRankDense` with the same name, activation, bias and
            dtype policy.

        Raises:
            ValueError: `rank` is out of range for the kernel.
        """
        kernel = np.asarray(ops.convert_to_numpy(layer.kernel), "float64")
        u, s, vt = np.linalg.svd(kernel, full_matrices=False)
        check_rank(layer.name, kernel.shape, rank)
        left, right = split_factors(u, s, vt, rank)
        config = layer.get_config()
        new = cls(
            units=layer.units,
            rank=rank,
            activation=config["activation"],
            use_bias=layer.use_bias,
            kernel_initializer=config["kernel_initializer"],
            bias_initializer=config["bias_initializer"],
            dtype=layer.dtype_policy,
            name=layer.name,
        )
        new.build((None, kernel.shape[0]))
        new.left_kernel.assign(left)
        new.right_kernel.assign(right)
        if layer.use_bias:
            new.bias.assign(layer.bias)
        return new

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "units": self.units,
                "rank": self.rank,
                "activation": keras.activations.serialize(self.activation),
                "use_bias": self.use_bias,
                "kernel_initializer": keras.initializers.serialize(
                    self.kernel_initializer
                ),
                "bias_initializer": keras.initializers.serialize(
                    self.bias_initializer
                ),
            }
        )
        return config


@keras.saving.register_keras_serializable(package="keras_llm")
class LowRankEinsumDense(keras.layers.Layer):
    """EinsumDense layer whose kernel is the product of two thin factors.

    The kernel of an `EinsumDense` with equation `"in,kernel->out"` has
    contracted axes (in the input and the kernel, not the output) and output
    axes (in the kernel and the output). Seen as a matrix of contracted x
    output axes it factorizes as `left @ right`; this layer then computes
    two einsums, `inputs` with `left` (contracted axes to `rank`) and the
    result with `right` (`rank` to the output axes), plus the bias.
    `LowRankEinsumDense.from_einsum_dense` builds one from a trained
    `keras.layers.EinsumDense` by truncated SVD.

    Args:
        equation: str. The `EinsumDense` equation.
        rank: int. Inner width of the factorization.
        kernel_shape: tuple of ints. Shape of the full kernel, in the
            order of the equation's kernel axes.
        bias_shape: tuple of ints or `None`. Shape of the bias (as
            `EinsumDense` creates it from `bias_axes`). Defaults to `None`.
        activation: activation name or callable. Defaults to `None`.
        kernel_initializer: initializer of both factors. Defaults to
            `"glorot_uniform"`.
        bias_initializer: initializer of the bias. Defaults to `"zeros"`.
        **kwargs: standard `keras.layers.Layer` arguments.

    Example:

    ```python
    import numpy as np
    import keras
    from keras_llm.compression.low_rank import LowRankEinsumDense

    layer = keras.layers.EinsumDense(
        "btd,dnh->btnh", (None, 4, 8), bias_axes="nh"
    )
    layer.build((None, 5, 32))
    low = LowRankEinsumDense.from_einsum_dense(layer, rank=8)
    y = low(np.ones((2, 5, 32), "float32"))  # (2, 5, 4, 8)
    ```
    """

    def __init__(
        self,
        equation,
        rank,
        kernel_shape,
        bias_shape=None,
        activation=None,
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        **kwargs,
    ):
        super().__init__(**kwargs)
        _check_positive(type(self).__name__, "rank", rank)
        self.equation = equation
        self.rank = rank
        self.kernel_shape = tuple(int(d) for d in kernel_shape)
        self.bias_shape = (
            None if bias_shape is None else tuple(int(d) for d in bias_shape)
        )
        self.activation = keras.activations.get(activation)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        parts = einsum_parts(equation, type(self).__name__)
        (
            self._left_equation,
            self._right_equation,
            self._contracted,
            self._outputs,
        ) = parts
        kernel_axes = equation.split(",")[1].split("->")[0]
        if len(kernel_axes) != len(self.kernel_shape):
            raise ValueError(
                f"`{type(self).__name__}` got kernel_shape="
                f"{self.kernel_shape} for kernel axes {kernel_axes!r}."
            )
        sizes = dict(zip(kernel_axes, self.kernel_shape))
        self._left_shape = tuple(sizes[a] for a in self._contracted)
        self._right_shape = tuple(sizes[a] for a in self._outputs)

    def build(self, input_shape):
        self.left_kernel = self.add_weight(
            name="left_kernel",
            shape=self._left_shape + (self.rank,),
            initializer=self.kernel_initializer,
        )
        self.right_kernel = self.add_weight(
            name="right_kernel",
            shape=(self.rank,) + self._right_shape,
            initializer=self.kernel_initializer,
        )
        self.bias = None
        if self.bias_shape is not None:
            self.bias = self.add_weight(
                name="bias",
                shape=self.bias_shape,
                initializer=self.bias_initializer,
            )
        self.built = True

    def call(self, inputs):
        x = ops.einsum(self._left_equation, inputs, self.left_kernel)
        x = ops.einsum(self._right_equation, x, self.right_kernel)
        if self.bias is not None:
            x = ops.add(x, self.bias)
        if self.activation is not None:
            x = self.activation(x)
        return x

    @property
    def kernel(self):
        """The full kernel, in the equation's kernel axis order."""
        left = ops.reshape(self.left_kernel, (-1, self.rank))
        right = ops.reshape(self.right_kernel, (self.rank, -1))
        matrix = ops.matmul(left, right)
        kernel = ops.reshape(matrix, self._left_shape + self._right_shape)
        kernel_axes = self.equation.split(",")[1].split("->")[0]
        order = self._contracted + self._outputs
        return ops.transpose(kernel, [order.index(a) for a in kernel_axes])

    @classmethod
    def from_einsum_dense(cls, layer, rank):
        """A built `LowRankEinsumDense` equal to `layer` up to rank `rank`.

        Args:
            layer: a built `keras.layers.EinsumDense`.
            rank: int, at most the smaller side of the kernel matrix.

        Returns:
            A built `LowRankEinsumDense` with the same name, activation,
            bias and dtype policy.

        Raises:
            ValueError: the equation cannot be factorized, or `rank` is out
                of range for the kernel.
        """
        matrix, _, _ = einsum_kernel_matrix(layer)
        u, s, vt = np.linalg.svd(matrix, full_matrices=False)
        check_rank(layer.name, matrix.shape, rank)
        left, right = split_factors(u, s, vt, rank)
        config = layer.get_config()
        bias = getattr(layer, "bias", None)
        new = cls(
            equation=layer.equation,
            rank=rank,
            kernel_shape=tuple(layer.kernel.shape),
            bias_shape=None if bias is None else tuple(bias.shape),
            activation=config["activation"],
            kernel_initializer=config["kernel_initializer"],
            bias_initializer=config["bias_initializer"],
            dtype=layer.dtype_policy,
            name=layer.name,
        )
        new.build(None)
        new.left_kernel.assign(left.reshape(new._left_shape + (rank,)))
        new.right_kernel.assign(right.reshape((rank,) + new._right_shape))
        if bias is not None:
            new.bias.assign(bias)
        return new

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "equation": self.equation,
                "rank": self.rank,
                "kernel_shape": list(self.kernel_shape),
                "bias_shape": (
                    None if self.bias_shape is None else list(self.bias_shape)
                ),
                "activation": keras.activations.serialize(self.activation),
                "kernel_initializer": keras.initializers.serialize(
                    self.kernel_initializer
                ),
                "bias_initializer": keras.initializers.serialize(
                    self.bias_initializer
                ),
            }
        )
        return config


_LOW_RANK_TYPES = (LowRankDense, LowRankEinsumDense)


# --------------------------------------------------------------------------
# Linear algebra helpers
# --------------------------------------------------------------------------


def _check_positive(owner, name, value):
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(
            f"`{owner}` expects `{name}` to be a positive integer. "
            f"Received: {name}={value!r}."
        )


def check_rank(layer_name, matrix_shape, rank):
    """Raises unless `1 <= rank <= min(matrix_shape)`, naming the layer."""
    limit = min(matrix_shape)
    if isinstance(rank, bool) or not isinstance(rank, (int, np.integer)):
        raise ValueError(
            f"`rank` must be a positive integer. Received: rank={rank!r}."
        )
    if not 1 <= rank <= limit:
        raise ValueError(
            f"rank={rank} is out of range for layer '{layer_name}': its "
            f"kernel is {matrix_shape[0]}x{matrix_shape[1]}, so the rank "
            f"must be between 1 and {limit}."
        )


def split_factors(u, s, vt, rank):
    """`(U_r diag(s_r)^1/2, diag(s_r)^1/2 V_r^T)` as float32 arrays."""
    root = np.sqrt(s[:rank])
    left = u[:, :rank] * root[None, :]
    right = root[:, None] * vt[:rank]
    return left.astype("float32"), right.astype("float32")


def rank_for_energy(singular_values, energy):
    """Smallest rank whose squared singular values reach `energy` of the sum.

    Args:
        singular_values: 1-D array, descending.
        energy: float in (0, 1].

    Returns:
        int, between 1 and `len(singular_values)`; `energy=1` keeps them
        all.
    """
    squares = np.asarray(singular_values, "float64") ** 2
    total = squares.sum()
    if energy >= 1.0:
        return len(squares)
    if total == 0:
        return 1
    fractions = np.cumsum(squares) / total
    # A small tolerance so that an energy equal to a partial sum is not
    # missed by float rounding of the cumulative sum.
    rank = int(np.searchsorted(fractions, energy - 1e-12) + 1)
    return min(rank, len(squares))


def einsum_parts(equation, owner="LowRankEinsumDense"):
    """Splits an EinsumDense equation into the two low-rank einsums.

    Returns:
        `(left_equation, right_equation, contracted_axes, output_axes)`:
        `inputs, left -> hidden` and `hidden, right -> outputs`, where
        `left` has the contracted axes then the rank axis and `right` the
        rank axis then the kernel's output axes.

    Raises:
        ValueError: the equation is not `"in,kernel->out"`, or a kernel axis
            is in both the input and the output (a batched kernel, which is
            not one matrix).
    """
    try:
        lhs, out = equation.replace(" ", "").split("->")
        inp, kern = lhs.split(",")
    except ValueError:
        raise ValueError(
            f"`{owner}` expects an equation 'input,kernel->output'. "
            f"Received: {equation!r}."
        ) from None
    letters = set((inp + kern + out).replace(".", ""))
    batched = [a for a in kern if a in inp and a in out]
    if batched:
        raise ValueError(
            f"`{owner}` cannot factorize equation {equation!r}: kernel axes "
            f"{batched} are also batch axes."
        )
    contracted = "".join(a for a in kern if a in inp and a not in out)
    outputs = "".join(a for a in kern if a in out and a not in inp)
    if len(contracted) + len(outputs) != len(kern):
        raise ValueError(
            f"`{owner}` cannot factorize equation {equation!r}: some kernel "
            "axes are summed away."
        )
    spare = [c for c in string.ascii_letters if c not in letters]
    r = spare[0]
    hidden = "".join(a for a in _tokens(inp) if a not in contracted) + r
    left_equation = f"{inp},{contracted}{r}->{hidden}"
    right_equation = f"{hidden},{r}{outputs}->{out}"
    return left_equation, right_equation, contracted, outputs


def _tokens(spec):
    """Axis tokens of an einsum operand, keeping `...` as one token."""
    out, i = [], 0
    while i < len(spec):
        if spec.startswith("...", i):
            out.append("...")
            i += 3
        else:
            out.append(spec[i])
            i += 1
    return out


def einsum_kernel_matrix(layer):
    """An EinsumDense kernel as a float64 (contracted x output) matrix.

    Returns:
        `(matrix, contracted_axes, output_axes)`.
    """
    _, _, contracted, outputs = einsum_parts(layer.equation, layer.name)
    kern = layer.equation.replace(" ", "").split(",")[1].split("->")[0]
    kernel = np.asarray(ops.convert_to_numpy(layer.kernel), "float64")
    order = [kern.index(a) for a in contracted + outputs]
    kernel = np.transpose(kernel, order)
    rows = int(np.prod(kernel.shape[: len(contracted)]))
    return kernel.reshape(rows, -1), contracted, outputs


def _kernel_matrix(layer):
    if isinstance(layer, keras.layers.EinsumDense):
        return einsum_kernel_matrix(layer)[0]
    return np.asarray(ops.convert_to_numpy(layer.kernel), "float64")


def _bias_size(layer):
    bias = getattr(layer, "bias", None)
    return 0 if bias is None else int(np.prod(bias.shape))


def _low_rank_layer(layer, rank):
    if isinstance(layer, keras.layers.EinsumDense):
        return LowRankEinsumDense.from_einsum_dense(layer, rank)
    return LowRankDense.from_dense(layer, rank)


# --------------------------------------------------------------------------
# Finding and swapping layers inside a model
# --------------------------------------------------------------------------


def _sublayers(layer):
    return list(getattr(layer, "_layers", []) or [])


def _locate(parent, child):
    """The step `[attribute, index]` that reaches `child` from `parent`, or
    `None`: a public attribute, an item of a list attribute, or (for
    Functional/Sequential) an item of `parent.layers`."""
    found = None
    for name, value in vars(parent).items():
        if name in ("_layers", "_tracker") or name.startswith("__"):
            continue
        if value is child:
            step = [name, None]
        elif isinstance(value, (list, tuple)) and any(
            v is child for v in value
        ):
            index = next(i for i, v in enumerate(value) if v is child)
            step = [name, index]
        else:
            continue
        if found is None or (found[0].startswith("_") and name[0] != "_"):
            found = step
    if found is None and isinstance(parent, keras.Model):
        try:
            layers = parent.layers
        except Exception:  # pragma: no cover - defensive
            layers = []
        for i, v in enumerate(layers):
            if v is child:
                return ["layers", i]
    return found


def _is_graph_model(model):
    """A Functional or Sequential model (its layers are graph nodes)."""
    return isinstance(model, keras.Sequential) or (
        isinstance(model, keras.Model) and hasattr(model, "_operations")
    )


def _is_plain_graph_model(model):
    return isinstance(model, keras.Sequential) or (
        type(model).__name__ == "Functional"
        and type(model).__module__.startswith("keras.")
    )


def _candidates(model):
    """Every Dense/EinsumDense under `model`, depth first.

    Returns:
        list of dicts: `layer`, `path` (layer names joined by "/"),
        `chain` (attribute steps from the model, or `None` if unreachable),
        `top_level` (a node of the model's own functional graph) and
        `graph_owner` (the Functional/Sequential model whose graph holds
        the layer as a node, or `None`).
    """
    found, seen = [], set()

    def visit(parent, names, chain, depth):
        for child in _sublayers(parent):
            if id(child) in seen or isinstance(child, keras.layers.InputLayer):
                continue
            seen.add(id(child))
            step = _locate(parent, child) if chain is not None else None
            child_chain = None if step is None else chain + [step]
            child_names = names + [child.name]
            if isinstance(child, _DENSE_TYPES):
                found.append(
                    {
                        "layer": child,
                        "path": "/".join(child_names),
                        "chain": child_chain,
                        "top_level": depth == 0 and _is_graph_model(model),
                        "graph_owner": (
                            parent if _is_graph_model(parent) else None
                        ),
                    }
                )
            else:
                visit(child, child_names, child_chain, depth + 1)

    visit(model, [], [], 0)
    return found


def _resolve(root, chain):
    """`(parent, step, layer)` at the end of an attribute chain."""
    parent = root
    for i, (name, index) in enumerate(chain):
        value = getattr(parent, name)
        if index is not None:
            value = value[index]
        if i == len(chain) - 1:
            return parent, (name, index), value
        parent = value
    raise ValueError("empty layer chain")


def _swap(root, chain, new):
    """Puts `new` where `chain` leads, keeping Keras' tracker consistent."""
    parent, (name, index), old = _resolve(root, chain)
    if name == "layers" and _is_graph_model(parent):
        raise ValueError(
            f"Cannot replace '{old.name}': it is a node of the functional "
            f"graph of '{parent.name}'."
        )
    tracker = getattr(parent, "_tracker", None)
    if tracker is not None and tracker.is_in_store("layers", old):
        tracker.replace_tracked_value("layers", old, new)
    locked = tracker is not None and tracker.locked
    if locked:
        tracker.unlock()
    try:
        if index is None:
            setattr(parent, name, new)
        else:
            container = getattr(parent, name)
            if isinstance(container, tuple):
                items = list(container)
                items[index] = new
                setattr(parent, name, type(container)(items))
            else:
                list.__setitem__(container, index, new)
    finally:
        if locked:
            tracker.lock()
    if _resolve(root, chain)[2] is not new:
        raise ValueError(
            f"Cannot replace '{old.name}': its parent "
            f"'{parent.name}' does not hold it in a settable attribute."
        )
    return old


# --------------------------------------------------------------------------
# The wrapper model for nested replacements
# --------------------------------------------------------------------------


@keras.saving.register_keras_serializable(package="keras_llm")
class LowRankModel(keras.Model):
    """A model whose nested Dense/EinsumDense layers were factorized.

    `factorize` returns one when a factorized layer sits inside another
    layer (as in keras_llm's `GPT`). It holds the base model, with each
    factorized layer swapped into its parent's attribute, and calls it.
    Its config is the base model's config plus, for each factorized layer,
    the attribute chain that reaches it and the low-rank layer's config, so
    `keras.saving.load_model` rebuilds the base model, swaps the same
    layers, then reads the weights.

    Args:
        model: the base model (or its serialized config).
        factorized_layers: dict mapping a layer path to
            `{"chain": [[attribute, index_or_None], ...], "layer": config}`.
            Layers already swapped in `model` are kept.
        **kwargs: `keras.Model` arguments (`name`, `trainable`).

    Example:

    ```python
    import numpy as np
    import keras_llm
    from keras_llm.compression.low_rank import factorize

    gpt = keras_llm.models.GPT(
        vocabulary_size=20, num_layers=1, num_heads=2, hidden_dim=16,
        max_sequence_length=8,
    )
    small, report = factorize(gpt, rank=4)
    logits = small(np.zeros((1, 8), "int32"))  # (1, 8, 20)
    ```
    """

    def __init__(self, model, factorized_layers, **kwargs):
        super().__init__(**kwargs)
        if isinstance(model, dict):
            model = keras.saving.deserialize_keras_object(model)
        self.base_model = model
        self.factorized_layers = {
            path: {
                "chain": [list(step) for step in entry["chain"]],
                "layer": entry["layer"],
            }
            for path, entry in factorized_layers.items()
        }
        for path, entry in self.factorized_layers.items():
            _, _, current = _resolve(model, entry["chain"])
            if isinstance(current, _LOW_RANK_TYPES):
                continue
            if not isinstance(current, _DENSE_TYPES) or not current.built:
                raise ValueError(
                    f"`LowRankModel` expects a built Dense or EinsumDense at "
                    f"'{path}'. Found {type(current).__name__}."
                )
            new = keras.saving.deserialize_keras_object(entry["layer"])
            if not new.built:
                new.build_from_config(current.get_build_config())
            _swap(model, entry["chain"], new)
        if model.built:
            self.built = True

    def call(self, inputs, training=None):
        return self.base_model(inputs, training=training)

    def generate(self, *args, **kwargs):
        """The base model's `generate` (for example `GPT.generate`)."""
        if not hasattr(self.base_model, "generate"):
            raise AttributeError(
                f"The base model {type(self.base_model).__name__} of "
                f"'{self.name}' has no `generate`."
            )
        return self.base_model.generate(*args, **kwargs)

    def get_config(self):
        return {
            "name": self.name,
            "trainable": self.trainable,
            "model": keras.saving.serialize_keras_object(self.base_model),
            "factorized_layers": self.factorized_layers,
        }

    @classmethod
    def from_config(cls, config):
        return cls(**config)


# --------------------------------------------------------------------------
# The report
# --------------------------------------------------------------------------


class FactorizationReport:
    """What `factorize` did, per layer.

    Attributes:
        layers: list of dicts, one per factorized layer: `path`, `type`,
            `shape` (the kernel as a matrix, `(m, n)`), `rank`,
            `params_before`, `params_after` (kernel plus bias),
            `relative_error` (`||W - A B||_F / ||W||_F`) and `energy`
            (fraction of the squared singular values kept).
        skipped: list of dicts with `path` and `reason`.
        params_before: parameters of the whole model before.
        params_after: parameters of the whole model after.
    """

    def __init__(self, layers, skipped, params_before, params_after):
        self.layers = layers
        self.skipped = skipped
        self.params_before = params_before
        self.params_after = params_after

    def table(self):
        """The report as a `rich.table.Table`."""
        from rich.table import Table

        table = Table(title="Low-rank factorization")
        for column in ("layer", "kernel", "rank", "params", "rel. error"):
            justify = "left" if column == "layer" else "right"
            table.add_column(column, justify=justify)
        for row in self.layers:
            m, n = row["shape"]
            table.add_row(
                row["path"],
                f"{m}x{n}",
                str(row["rank"]),
                f"{row['params_before']:,} -> {row['params_after']:,}",
                f"{row['relative_error']:.4f}",
            )
        for row in self.skipped:
            table.add_row(row["path"], "", "", "skipped: " + row["reason"], "")
        table.caption = (
            f"model parameters {self.params_before:,} -> {self.params_after:,}"
        )
        return table

    def print(self, console=None):
        """Prints the table with `rich`."""
        from rich.console import Console

        (console or Console()).print(self.table())

    def __repr__(self):
        return (
            f"FactorizationReport({len(self.layers)} layers factorized, "
            f"{len(self.skipped)} skipped, parameters "
            f"{self.params_before} -> {self.params_after})"
        )


# --------------------------------------------------------------------------
# factorize
# --------------------------------------------------------------------------


def _select(candidates, layers):
    if layers is None:
        return candidates
    if callable(layers):
        return [c for c in candidates if layers(c["layer"])]
    if isinstance(layers, str):
        layers = [layers]
    try:
        patterns = list(layers)
    except TypeError:
        raise TypeError(
            "`factorize` expects `layers` to be None, a list of layer names "
            f"or paths, or a predicate. Received: {layers!r}."
        ) from None

    def matches(c, pattern):
        return fnmatch.fnmatchcase(c["layer"].name, pattern) or (
            fnmatch.fnmatchcase(c["path"], pattern)
        )

    missing = [
        p for p in patterns if not any(matches(c, p) for c in candidates)
    ]
    if missing:
        names = ", ".join(c["path"] for c in candidates) or "none"
        raise ValueError(
            f"`factorize` found no Dense or EinsumDense layer matching "
            f"{missing}. Available: {names}."
        )
    return [c for c in candidates if any(matches(c, p) for p in patterns)]


def _plan(candidate, rank, energy, min_reduction):
    """A plan dict for one layer, or a skip reason (str)."""
    layer = candidate["layer"]
    if not layer.built:
        return "not built"
    if getattr(layer, "quantization_mode", None):
        return f"quantized ({layer.quantization_mode})"
    if getattr(layer, "lora_enabled", False):
        return "LoRA enabled"
    if candidate["chain"] is None:
        return "not reachable through an attribute of its parent"
    try:
        matrix = _kernel_matrix(layer)
    except ValueError as error:
        return str(error)
    m, n = matrix.shape
    s = np.linalg.svd(matrix, compute_uv=False)
    if rank is not None:
        check_rank(layer.name, (m, n), rank)
        r = int(rank)
    else:
        r = rank_for_energy(s, energy)
    bias = _bias_size(layer)
    before = m * n + bias
    after = r * (m + n) + bias
    if r * (m + n) >= m * n * (1.0 - min_reduction) or r * (m + n) >= m * n:
        return (
            f"rank {r} of a {m}x{n} kernel saves too little "
            f"({m * n:,} -> {r * (m + n):,} parameters)"
        )
    squares = s.astype("float64") ** 2
    total = squares.sum()
    error = float(np.sqrt(squares[r:].sum() / total)) if total else 0.0
    kept = float(squares[:r].sum() / total) if total else 1.0
    return {
        "path": candidate["path"],
        "type": type(layer).__name__,
        "shape": (int(m), int(n)),
        "rank": r,
        "params_before": int(before),
        "params_after": int(after),
        "relative_error": error,
        "energy": kept,
    }


def _copy_model(model):
    """An independent copy of `model` (config round trip plus weights)."""
    copy = keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(model)
    )
    if not copy.built and model.built:
        copy.build_from_config(model.get_build_config())
    old, new = model.weights, copy.weights
    if [tuple(w.shape) for w in old] != [tuple(w.shape) for w in new]:
        raise ValueError(
            f"`factorize` could not copy model '{model.name}': its config "
            "round trip builds different weights."
        )
    for target, source in zip(new, old):
        target.assign(source)
    return copy


def _clone_graph_model(model, replacements):
    """`clone_model` of a plain Functional/Sequential model, with the
    top-level layers in `replacements` (id -> new layer) swapped in and
    every other layer copied with its weights."""
    copies = []

    def clone_function(layer):
        if id(layer) in replacements:
            return replacements[id(layer)]
        new = layer.__class__.from_config(layer.get_config())
        copies.append((layer, new))
        return new

    clone = keras.models.clone_model(model, clone_function=clone_function)
    for old, new in copies:
        if old.weights:
            new.set_weights(old.get_weights())
    return clone


def factorize(
    model,
    *,
    rank=None,
    energy=None,
    layers=None,
    min_reduction=0.0,
    verbose=False,
):
    """Replaces Dense and EinsumDense kernels by truncated-SVD products.

    Each selected kernel `W` (an EinsumDense kernel seen as contracted axes
    x output axes) becomes `A @ B` of rank `rank`, or of the smallest rank
    keeping an `energy` fraction of the squared singular values. A layer is
    replaced only if that cuts its kernel parameters (by at least
    `min_reduction`); the others are listed in `report.skipped`. The input
    model is left unchanged. Fine-tune the result with `fit` as usual.

    Args:
        model: a built `keras.Model`: Functional, Sequential, or subclassed
            (keras_llm's `GPT` included).
        rank: int. The rank of every factorized kernel; it may not exceed
            the smaller side of any selected kernel. Give `rank` or
            `energy`, not both.
        energy: float in (0, 1]. Keep the smallest rank whose squared
            singular values sum to at least this fraction of the total.
        layers: which layers to consider: `None` (every Dense and
            EinsumDense), a list of layer names or "/"-joined paths
            (`fnmatch` patterns such as `"block_*/feed_forward/*"`), or a
            predicate taking the layer. Defaults to `None`.
        min_reduction: float in [0, 1). Factorize only when the kernel's
            parameters shrink by at least this fraction. Defaults to `0.0`
            (any reduction).
        verbose: bool. Print the report as a `rich` table. Defaults to
            `False`.

    Returns:
        `(new_model, report)`: a Functional/Sequential clone when every
        factorized layer is a node of a plain functional graph, otherwise a
        `LowRankModel` around a copy of `model`; and a
        `FactorizationReport`.

    Raises:
        ValueError: both or neither of `rank` and `energy`; `energy`
            outside (0, 1]; `rank` larger than a selected kernel (the error
            names the layer); `layers` names matching nothing; or no layer
            that can be factorized.
        TypeError: `model` is not a `keras.Model`.

    Example:

    ```python
    import numpy as np
    import keras
    from keras_llm.compression.low_rank import factorize

    inputs = keras.Input((32,))
    outputs = keras.layers.Dense(4)(keras.layers.Dense(64)(inputs))
    model = keras.Model(inputs, outputs)
    small, report = factorize(model, rank=4)  # the 64x4 layer is skipped
    small.compile("adam", "mse")
    small.fit(np.ones((8, 32)), np.ones((8, 4)), epochs=1, verbose=0)
    ```
    """
    if not isinstance(model, keras.Model):
        raise TypeError(
            "`factorize` expects a keras.Model. "
            f"Received: {type(model).__name__}."
        )
    if (rank is None) == (energy is None):
        raise ValueError(
            "`factorize` needs exactly one of `rank` and `energy`. "
            f"Received: rank={rank!r}, energy={energy!r}."
        )
    if rank is not None and (
        isinstance(rank, bool)
        or not isinstance(rank, (int, np.integer))
        or rank < 1
    ):
        raise ValueError(
            f"`factorize` expects `rank` to be a positive integer. "
            f"Received: rank={rank!r}."
        )
    if energy is not None and (
        isinstance(energy, bool)
        or not isinstance(energy, (int, float))
        or not 0.0 < energy <= 1.0
    ):
        raise ValueError(
            f"`factorize` expects `energy` in (0, 1]. Received: "
            f"energy={energy!r}."
        )
    if not isinstance(min_reduction, (int, float)) or not (
        0.0 <= min_reduction < 1.0
    ):
        raise ValueError(
            "`factorize` expects `min_reduction` in [0, 1). Received: "
            f"min_reduction={min_reduction!r}."
        )
    if not model.built:
        raise ValueError(
            f"`factorize` needs a built model; call '{model.name}' on a "
            "batch first."
        )

    candidates = _select(_candidates(model), layers)
    plans, skipped = [], []
    plain = _is_plain_graph_model(model)
    for c in candidates:
        plan = _plan(c, rank, energy, min_reduction)
        if isinstance(plan, str):
            skipped.append({"path": c["path"], "reason": plan})
        elif c["graph_owner"] is not None and not (c["top_level"] and plain):
            # Swapping an attribute does not change a graph's nodes; only
            # the plain top-level graph is rebuilt (by clone_model).
            owner = c["graph_owner"]
            skipped.append(
                {
                    "path": c["path"],
                    "reason": "a node of the functional graph of "
                    f"'{owner.name}' ({type(owner).__name__}), which "
                    "cannot be rebuilt here",
                }
            )
        else:
            plans.append((c, plan))
    if not plans:
        details = "; ".join(f"{s['path']}: {s['reason']}" for s in skipped)
        raise ValueError(
            f"`factorize` found no layer to factorize in '{model.name}' "
            f"(Dense and EinsumDense layers whose rank-reduced kernel is "
            f"smaller). Skipped: {details or 'no Dense or EinsumDense layer'}."
        )

    top = [(c, p) for c, p in plans if c["top_level"]]
    nested = [(c, p) for c, p in plans if not c["top_level"]]
    if top:
        replacements = {
            id(c["layer"]): _low_rank_layer(c["layer"], p["rank"])
            for c, p in top
        }
        base = _clone_graph_model(model, replacements)
    else:
        base = _copy_model(model)

    factorized = {}
    for c, p in nested:
        # The copy has the same weights: factorize the original layer.
        new = _low_rank_layer(c["layer"], p["rank"])
        _swap(base, c["chain"], new)
        factorized[c["path"]] = {
            "chain": c["chain"],
            "layer": keras.saving.serialize_keras_object(new),
        }
    result = base
    if factorized:
        result = LowRankModel(base, factorized, name=f"{model.name}_low_rank")
    report = FactorizationReport(
        [p for _, p in plans],
        skipped,
        params_before=int(model.count_params()),
        params_after=int(result.count_params()),
    )
    if verbose:
        report.print()
    return result, report
