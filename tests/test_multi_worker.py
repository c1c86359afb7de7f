"""`fit` under MultiWorkerMirroredStrategy (keras#20585) and the fix's guard.

The two-worker tests start tests/multi_worker_train.py as two processes on
127.0.0.1, each with its own `TF_CONFIG`; no MultiWorkerMirroredStrategy is
ever created in the pytest process.
"""

import json
import os
import socket
import subprocess
import sys

import keras
import numpy as np
import pytest

from keras_llm import multi_worker_fix

SCRIPT = os.path.join(os.path.dirname(__file__), "multi_worker_train.py")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT = 300


def _free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _env(tf_config=None):
    env = dict(os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="2")
    env.pop("TF_CONFIG", None)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (ROOT, env.get("PYTHONPATH")) if p
    )
    if tf_config is not None:
        env["TF_CONFIG"] = json.dumps(tf_config)
    return env


def _start(args, tf_config=None):
    return subprocess.Popen(
        [sys.executable, SCRIPT, *args],
        env=_env(tf_config),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _start_workers(tmp_path, *extra):
    cluster = {"worker": [f"127.0.0.1:{p}" for p in _free_ports(2)]}
    return [
        _start(
            [
                "--strategy",
                "multi_worker",
                "--out",
                str(tmp_path / f"worker_{i}.npz"),
                *extra,
            ],
            {"cluster": cluster, "task": {"type": "worker", "index": i}},
        )  # fmt: skip
        for i in range(2)
    ]


def _wait(processes):
    """Return codes and outputs; a hung process is killed, not waited on."""
    results = []
    for process in processes:
        try:
            output, _ = process.communicate(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            output, _ = process.communicate()
        results.append((process.returncode, output))
    return results


def _weights(npz):
    names = sorted(
        (k for k in npz.files if k.startswith("w")), key=lambda k: int(k[1:])
    )
    return [npz[k] for k in names]


def test_guard_passes_on_the_installed_keras():
    # Fails (listing what changed) when a Keras upgrade changes the
    # internals the fix patches: then re-check keras#20585.
    assert multi_worker_fix.check_keras_internals() == [], keras.__version__


def test_guard_names_the_issue_and_version(monkeypatch):
    expected = dict(multi_worker_fix._EXPECTED)
    signature, lines = expected["reduce_per_replica"]
    expected["reduce_per_replica"] = (signature, (*lines, "no such line"))
    expected["TensorFlowTrainer.gone"] = (None, ())
    monkeypatch.setattr(multi_worker_fix, "_EXPECTED", expected)
    problems = multi_worker_fix.check_keras_internals()
    assert problems == [
        "reduce_per_replica no longer has `no such line`",
        "TensorFlowTrainer.gone is gone",
    ]
    with pytest.raises(multi_worker_fix.KerasInternalsChanged) as caught:
        multi_worker_fix._raise_if_changed()
    message = str(caught.value)
    assert "keras#20585" in message and keras.__version__ in message


def test_apply_is_idempotent_and_leaves_one_worker_alone():
    import tensorflow as tf
    from keras.src.backend.tensorflow import trainer

    multi_worker_fix.apply()
    patched = trainer.reduce_per_replica
    build = trainer.TensorFlowTrainer._maybe_symbolic_build
    multi_worker_fix.apply()
    assert multi_worker_fix.is_applied()
    assert trainer.reduce_per_replica is patched
    assert trainer.TensorFlowTrainer._maybe_symbolic_build is build
    assert patched.__wrapped__.__module__ == trainer.__name__
    assert multi_worker_fix.check_keras_internals() == []
    # Outside a multi-worker strategy the original Keras code runs.
    values = {"loss": tf.constant(2.0), "v": tf.constant([1.0, 3.0])}
    out = patched(values, tf.distribute.get_strategy(), "auto")
    assert out["loss"].numpy() == 2.0
    np.testing.assert_array_equal(out["v"].numpy(), [1.0, 3.0])


@pytest.mark.slow
def test_two_workers_fit_matches_one_process(tmp_path):
    reference = tmp_path / "reference.npz"
    processes = _start_workers(tmp_path, "--evaluate")
    processes.append(_start(["--out", str(reference), "--evaluate"]))
    for rc, output in _wait(processes):
        assert rc == 0, f"a training process failed:\n{output[-3000:]}"
    workers = [np.load(tmp_path / f"worker_{i}.npz") for i in range(2)]
    single = np.load(reference)
    assert [int(w["replicas"]) for w in workers] == [2, 2]
    assert int(single["replicas"]) == 1
    ref = _weights(single)
    initial = [single[f"initial{i}"] for i in range(len(ref))]
    # Training moved the weights far more than the tolerance, so a wrongly
    # reduced gradient (summed, or one worker's only) would show.
    moved = max(np.abs(a - b).max() for a, b in zip(ref, initial))
    assert moved > 1e-2, moved
    for k, worker in enumerate(workers):
        for i, (got, want) in enumerate(zip(_weights(worker), ref)):
            np.testing.assert_allclose(
                got, want, rtol=0, atol=1e-5,
                err_msg=f"worker {k} weight {i} vs single process",
            )  # fmt: skip
        np.testing.assert_allclose(worker["loss"], single["loss"], atol=1e-5)
        np.testing.assert_allclose(
            worker["eval_loss"], single["eval_loss"], atol=1e-5
        )
    for a, b in zip(_weights(workers[0]), _weights(workers[1])):
        np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_without_the_fix_keras_fit_still_fails(tmp_path):
    # Documents keras#20585 on the installed Keras: when this starts to
    # pass training, Keras fixed it and keras_llm.multi_worker_fix can go.
    results = _wait(_start_workers(tmp_path, "--no-fix"))
    for rc, output in results:
        assert rc != 0, "fit under MWMS worked without the fix:\n" + output
        assert "PerReplica" in output, output[-3000:]
