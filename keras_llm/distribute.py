"""Picking a `tf.distribute` strategy by name.

TensorFlow's `tf.distribute` does the distributing; this module only maps a
name to a strategy, checks what the strategy needs (`TF_CONFIG`, a TPU, the
device count) up front so that a bad set-up is one clear line instead of a
hang or a gRPC traceback, and applies `keras_llm.multi_worker_fix` (a patch
for keras#20585, without which Keras 3's `fit` fails under
MultiWorkerMirroredStrategy).

Names and how to launch each (the same names go to `--strategy` of
`keras-llm pretrain`):

- `"auto"`: a TPU if a resolver finds one (`TPU_NAME` set, or TPU devices
  on a TPU VM), else MirroredStrategy over all GPUs when there are two or
  more, else the default strategy (one device).
  `keras-llm pretrain --data shards/ --out run/`
- `"default"`: no distribution, one device.
- `"mirrored"`: MirroredStrategy over all GPUs of this machine, or over its
  logical CPU devices when it has no GPU.
  `keras-llm pretrain --data shards/ --out run/ --strategy mirrored`
- `"cpu:N"`: N logical CPU devices with MirroredStrategy over them (data
  parallelism tried on a machine without accelerators; choose it before
  TensorFlow runs any operation).
  `keras-llm pretrain --data shards/ --out run/ --strategy cpu:2`
- `"multi_worker"`: MultiWorkerMirroredStrategy over the machines named in
  the `TF_CONFIG` environment variable (JSON: `{"cluster": {"worker":
  ["host0:port", "host1:port"]}, "task": {"type": "worker", "index": i}}`).
  Start the same command on every machine, each with its own `index`; all
  of them train, worker 0 is the chief. Two workers on one machine:

  ```
  export CLUSTER='"cluster": {"worker": ["127.0.0.1:20001", "127.0.0.1:20002"]}'
  TF_CONFIG="{$CLUSTER, \"task\": {\"type\": \"worker\", \"index\": 0}}" \
      keras-llm pretrain --data shards/ --out run/ --strategy multi_worker \
      --checkpoint-every 100 --checkpoint-dir /shared/ckpt &
  TF_CONFIG="{$CLUSTER, \"task\": {\"type\": \"worker\", \"index\": 1}}" \
      keras-llm pretrain --data shards/ --out run1/ --strategy multi_worker \
      --checkpoint-every 100 --checkpoint-dir /shared/ckpt
  ```

  The batch size is the global one, split between the workers. Give each
  worker its own `--out` (every worker writes one; worker 0's is the one
  to keep) and all of them one `--checkpoint-dir` that every worker sees
  (only the chief writes checkpoints; all resume from the same one). `model.fit` needs `keras_llm.multi_worker_fix`, which this
  name applies.
- `"tpu"` or `"tpu:ADDRESS"`: TPUStrategy through
  `tf.distribute.cluster_resolver.TPUClusterResolver`. `"tpu"` finds the
  TPU from `TPU_NAME` (Cloud TPU node) or the local devices (TPU VM);
  `"tpu:local"`, `"tpu:my-tpu"` or `"tpu:grpc://10.0.0.2:8470"` name it.
  `keras-llm pretrain --data shards/ --out gs://bucket/run/ --strategy tpu`
"""

import json
import os
import re

from keras_llm.errors import UserError

STRATEGY_NAMES = (
    "auto",
    "default",
    "mirrored",
    "cpu:N",
    "multi_worker",
    "tpu",
    "tpu:ADDRESS",
)


def _cpu_devices(count):
    """`count` logical CPU devices, creating them if TF has not started."""
    import tensorflow as tf

    physical = tf.config.list_physical_devices("CPU")
    try:
        tf.config.set_logical_device_configuration(
            physical[0], [tf.config.LogicalDeviceConfiguration()] * count
        )
    except RuntimeError:
        pass  # already initialised: use what exists
    logical = tf.config.list_logical_devices("CPU")
    if len(logical) < count:
        raise UserError(
            f"strategy cpu:{count} needs {count} logical CPU devices but "
            f"TensorFlow already started with {len(logical)}; choose the "
            "strategy before TensorFlow runs any operation"
        )
    return [d.name for d in logical[:count]]


def check_tf_config(environ=None):
    """The parsed `TF_CONFIG` of a multi-worker job, checked.

    Args:
        environ: mapping to read `TF_CONFIG` from. Defaults to `os.environ`.

    Returns:
        The `TF_CONFIG` dict, with a `"cluster"` of non-empty job lists and
        a `"task"` naming one of their entries.

    Raises:
        UserError: if `TF_CONFIG` is missing, not JSON or lacks those keys.

    Example:

    ```python
    from keras_llm.distribute import check_tf_config

    config = check_tf_config({"TF_CONFIG": (
        '{"cluster": {"worker": ["127.0.0.1:20001", "127.0.0.1:20002"]},'
        ' "task": {"type": "worker", "index": 1}}'
    )})
    print(config["task"])  # {'type': 'worker', 'index': 1}
    ```
    """
    environ = os.environ if environ is None else environ
    text = environ.get("TF_CONFIG", "").strip()
    usage = (
        'set TF_CONFIG to {"cluster": {"worker": ["host:port", ...]}, '
        '"task": {"type": "worker", "index": i}} on every worker'
    )
    if not text:
        raise UserError(f"strategy multi_worker needs TF_CONFIG: {usage}")
    try:
        config = json.loads(text)
    except json.JSONDecodeError as e:
        raise UserError(f"TF_CONFIG is not JSON ({e}): {usage}") from None
    cluster = config.get("cluster") if isinstance(config, dict) else None
    task = config.get("task") if isinstance(config, dict) else None
    if (
        not isinstance(cluster, dict)
        or not cluster
        or not all(
            isinstance(v, list) and v and all(isinstance(a, str) for a in v)
            for v in cluster.values()
        )
    ):
        raise UserError(
            "TF_CONFIG has no valid 'cluster' (a dict of job name to a "
            f"non-empty list of 'host:port'): {usage}"
        )
    if not isinstance(task, dict) or "type" not in task:
        raise UserError(f"TF_CONFIG has no 'task' with a 'type': {usage}")
    kind, index = task["type"], task.get("index", 0)
    if kind not in cluster:
        raise UserError(
            f"TF_CONFIG task type {kind!r} is not a job of the cluster "
            f"({', '.join(sorted(cluster))})"
        )
    if not isinstance(index, int) or not 0 <= index < len(cluster[kind]):
        raise UserError(
            f"TF_CONFIG task index {index!r} is not in "
            f"0..{len(cluster[kind]) - 1} for job {kind!r}"
        )
    return config


def _multi_worker_strategy():
    import tensorflow as tf

    from keras_llm import multi_worker_fix

    check_tf_config()
    multi_worker_fix.apply()
    return tf.distribute.MultiWorkerMirroredStrategy()


def find_tpu(address=None):
    """A `TPUClusterResolver` for a TPU, or `None` when none is found.

    Args:
        address: a TPU name, `"local"` or a `grpc://` address; `None` reads
            `TPU_NAME` (a Cloud TPU node) and else looks for local TPU
            devices (a TPU VM). Defaults to `None`.

    Returns:
        A `tf.distribute.cluster_resolver.TPUClusterResolver`, or `None`.
    """
    import tensorflow as tf

    resolver_class = tf.distribute.cluster_resolver.TPUClusterResolver
    if address:
        return resolver_class(tpu=address)
    try:
        return resolver_class()  # TPU_NAME, KUBE_GOOGLE_CLOUD_TPU_ENDPOINTS
    except ValueError:  # "Please provide a TPU Name to connect to."
        pass
    if tf.config.list_physical_devices("TPU"):
        return resolver_class(tpu="local")
    return None


def _tpu_strategy(address=None, resolver=None):
    import tensorflow as tf

    advice = "run on a TPU VM, set TPU_NAME, or pass tpu:ADDRESS"
    if resolver is None and not address and find_tpu() is None:
        raise UserError(
            "strategy tpu: no TPU found (TPU_NAME is unset and this machine "
            f"has no TPU devices); {advice}"
        )
    try:
        resolver = resolver or find_tpu(address)
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return tf.distribute.TPUStrategy(resolver)
    except (ImportError, ValueError, RuntimeError, tf.errors.OpError) as e:
        reason = " ".join(str(e).split()) or type(e).__name__
        where = f" at {address!r}" if address else ""
        raise UserError(
            f"strategy tpu: no TPU{where} ({reason[:120]}); {advice}"
        ) from None


def get_strategy(name="auto"):
    """Returns the `tf.distribute.Strategy` a name stands for.

    Args:
        name: `"auto"`, `"default"`, `"mirrored"`, `"cpu:N"`,
            `"multi_worker"`, `"tpu"` or `"tpu:ADDRESS"` (see the module
            docstring for what each means and how to launch it). Defaults
            to `"auto"`.

    Returns:
        A `tf.distribute.Strategy`; build and compile the model inside its
        `scope()`.

    Raises:
        UserError: for an unknown name, `"cpu:N"` after TensorFlow
            initialised fewer devices, `"multi_worker"` without a valid
            `TF_CONFIG`, or `"tpu"` where no TPU is reachable.

    Example:

    ```python
    import keras_llm

    strategy = keras_llm.distribute.get_strategy("default")
    print(strategy.num_replicas_in_sync)  # 1
    ```
    """
    import tensorflow as tf

    if not isinstance(name, str):
        raise UserError(f"strategy must be a name, got {name!r}")
    match = re.fullmatch(r"cpu:(\d+)", name)
    if match:
        count = int(match.group(1))
        if count < 1:
            raise UserError(f"strategy {name}: N must be at least 1")
        return tf.distribute.MirroredStrategy(_cpu_devices(count))
    if name == "tpu" or name.startswith("tpu:"):
        return _tpu_strategy(name[4:] or None)
    if name == "multi_worker":
        return _multi_worker_strategy()
    gpus = tf.config.list_physical_devices("GPU")
    if name == "auto":
        resolver = find_tpu()
        if resolver is not None:
            return _tpu_strategy(resolver=resolver)
        if len(gpus) > 1:
            return tf.distribute.MirroredStrategy()
        return tf.distribute.get_strategy()
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        if gpus:
            return tf.distribute.MirroredStrategy()
        devices = [d.name for d in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(devices)
    raise UserError(
        f"unknown strategy {name!r}; expected one of "
        f"{', '.join(STRATEGY_NAMES)}"
    )
