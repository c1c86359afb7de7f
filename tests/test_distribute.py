import numpy as np
import pytest
import tensorflow as tf

from keras_llm.distribute import get_strategy
from keras_llm.errors import UserError


def test_default_and_auto_on_a_machine_without_gpus():
    assert get_strategy("default") is tf.distribute.get_strategy()
    if not tf.config.list_physical_devices("GPU"):
        assert get_strategy("auto").num_replicas_in_sync == 1


def test_cpu_devices_and_mirrored():
    # tests/conftest.py created 2 logical CPUs before TensorFlow started;
    # these strategies are built, not run (the tests share one for fit).
    strategy = get_strategy("cpu:2")
    assert isinstance(strategy, tf.distribute.MirroredStrategy)
    assert strategy.num_replicas_in_sync == 2
    if not tf.config.list_physical_devices("GPU"):
        assert get_strategy("mirrored").num_replicas_in_sync == 2


@pytest.mark.parametrize(
    "name,message",
    [
        ("cpu:8", "already started with 2"),
        ("cpu:0", "at least 1"),
        ("gpus", "unknown strategy 'gpus'"),
        (3, "must be a name"),
    ],
)
def test_bad_names(name, message):
    with pytest.raises(UserError, match=message):
        get_strategy(name)


_NO_TPU_ENV = ("TPU_NAME", "KUBE_GOOGLE_CLOUD_TPU_ENDPOINTS", "TPU_CONFIG")


@pytest.mark.parametrize(
    "name,message",
    [
        ("tpu", r"^strategy tpu: no TPU found \(TPU_NAME is unset"),
        ("tpu:local", r"^strategy tpu: no TPU at 'local' \("),
    ],
)
def test_tpu_without_a_tpu_is_one_clear_line(monkeypatch, name, message):
    if tf.config.list_physical_devices("TPU"):
        pytest.fail("this test expects a machine without a TPU")
    for variable in _NO_TPU_ENV:
        monkeypatch.delenv(variable, raising=False)
    with pytest.raises(UserError, match=message) as caught:
        get_strategy(name)
    assert "\n" not in str(caught.value)
    assert str(caught.value).endswith("or pass tpu:ADDRESS")


def test_auto_does_not_pick_a_tpu_where_there_is_none(monkeypatch):
    for variable in _NO_TPU_ENV:
        monkeypatch.delenv(variable, raising=False)
    from keras_llm.distribute import find_tpu

    assert find_tpu() is None
    assert not isinstance(get_strategy("auto"), tf.distribute.TPUStrategy)


_CLUSTER = '"cluster": {"worker": ["127.0.0.1:1", "127.0.0.1:2"]}'


@pytest.mark.parametrize(
    "tf_config,message",
    [
        (None, "strategy multi_worker needs TF_CONFIG"),
        ("", "strategy multi_worker needs TF_CONFIG"),
        ("{cluster", "TF_CONFIG is not JSON"),
        ('{"task": {"type": "worker", "index": 0}}', "no valid 'cluster'"),
        ('{"cluster": {"worker": []}}', "no valid 'cluster'"),
        ("{" + _CLUSTER + "}", "no 'task' with a 'type'"),
        (
            "{" + _CLUSTER + ', "task": {"type": "chief", "index": 0}}',
            "task type 'chief' is not a job of the cluster",
        ),
        (
            "{" + _CLUSTER + ', "task": {"type": "worker", "index": 2}}',
            r"task index 2 is not in 0..1",
        ),
    ],
)
def test_multi_worker_needs_a_valid_tf_config(monkeypatch, tf_config, message):
    # Every case fails in the check, before a strategy (or a server) exists.
    if tf_config is None:
        monkeypatch.delenv("TF_CONFIG", raising=False)
    else:
        monkeypatch.setenv("TF_CONFIG", tf_config)
    with pytest.raises(UserError, match=message) as caught:
        get_strategy("multi_worker")
    assert "\n" not in str(caught.value)


def test_check_tf_config_accepts_a_cluster():
    from keras_llm.distribute import check_tf_config

    config = check_tf_config(
        {"TF_CONFIG": "{" + _CLUSTER + ', "task": {"type": "worker"}}'}
    )
    assert config["cluster"]["worker"][1] == "127.0.0.1:2"


def _write_shards(folder, tokens, per_shard):
    from keras_llm.data.shards import ShardWriter

    with ShardWriter(folder, tokens_per_shard=per_shard) as writer:
        writer.add(np.arange(tokens))  # window i starts with id i * T


def _first_ids(dataset):
    return [int(i) for inputs, _ in dataset for i in inputs[:, 0].numpy()]


@pytest.mark.parametrize(
    "per_shard,by_file", [(100, True), (1000, False)], ids=["file", "data"]
)
def test_shard_dataset_per_input_pipeline(tmp_path, per_shard, by_file):
    from keras_llm.data.shards import shard_arrays
    from keras_llm.data.shards import shard_dataset

    _write_shards(tmp_path, 400, per_shard)  # 4 shard files, or 1
    assert len(shard_arrays(tmp_path)) == (4 if by_file else 1)
    length = 8
    everything = _first_ids(
        shard_dataset(tmp_path, length, 1, shuffle=False, drop_remainder=False)
    )
    parts = []
    for k in range(2):
        context = tf.distribute.InputContext(
            num_input_pipelines=2, input_pipeline_id=k, num_replicas_in_sync=2
        )
        ds = shard_dataset(
            tmp_path, length, 4, shuffle=False, drop_remainder=False,
            input_context=context,
        )  # fmt: skip
        parts.append(_first_ids(ds))
        static = shard_dataset(
            tmp_path, length, 4, seed=k, input_context=context
        )
        # Per-replica batch (4 global / 2 replicas), fully static shapes.
        for spec in static.element_spec:
            assert spec.shape == (2, length) and spec.dtype == tf.int32
    assert not set(parts[0]) & set(parts[1])
    assert sorted(parts[0] + parts[1]) == everything
    if by_file:  # worker k starts its windows in files k and k + 2
        assert {i // per_shard for i in parts[0]} == {0, 2}
        assert {i // per_shard for i in parts[1]} == {1, 3}
    else:
        assert parts[0] == everything[0::2]


def test_shard_dataset_carries_data_auto_shard_policy(tmp_path):
    from keras_llm.data.shards import shard_dataset

    _write_shards(tmp_path, 200, 100)
    ds = shard_dataset(tmp_path, 8, 4)
    policy = ds.options().experimental_distribute.auto_shard_policy
    assert policy == tf.data.experimental.AutoShardPolicy.DATA


def test_distributed_shard_dataset_per_replica_batches(
    tmp_path, mirrored_strategy
):
    from keras_llm.data.shards import distributed_shard_dataset

    _write_shards(tmp_path, 400, 100)
    ds = distributed_shard_dataset(mirrored_strategy, tmp_path, 8, 4)
    inputs, targets = next(iter(ds))
    for value in (inputs, targets):
        local = mirrored_strategy.experimental_local_results(value)
        assert [tuple(v.shape) for v in local] == [(2, 8), (2, 8)]
    with pytest.raises(ValueError, match="not divisible by the 2 replicas"):
        distributed_shard_dataset(mirrored_strategy, tmp_path, 8, 3)
