"""`keras-llm pretrain --strategy multi_worker`: two worker processes on
127.0.0.1 train, checkpoint into one shared folder, and resume together.

The workers run the real command line (`python -m keras_llm.cli pretrain`),
each with its own `TF_CONFIG` and `--out`; no MultiWorkerMirroredStrategy is
created in the pytest process.
"""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from tests.test_multi_worker import _env
from tests.test_multi_worker import _free_ports
from tests.test_multi_worker import _wait

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT = 300
OPTIONS = [
    "--preset", "nano", "--sequence-length", "16", "--batch-size", "8",
    "--eval-interval", "2", "--eval-steps", "1", "--warmup-steps", "1",
    "--seed", "1", "--no-jit-compile", "--sample-length", "8",
    "--checkpoint-every", "2",
    # Keras clips each replica's gradient before the all-reduce: no clipping,
    # so two workers and one process take the same steps.
    "--clipnorm", "0",
]  # fmt: skip


def _pretrain(out, steps, checkpoints, tf_config=None, strategy="cpu:1"):
    return subprocess.Popen(
        [sys.executable, "-m", "keras_llm.cli", "pretrain", "--out", out]
        + ["--steps", str(steps), "--strategy", strategy]
        + ["--checkpoint-dir", checkpoints, *OPTIONS],
        env=_env(tf_config),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _workers(tmp_path, steps):
    cluster = {"worker": [f"127.0.0.1:{p}" for p in _free_ports(2)]}
    processes = [
        _pretrain(
            str(tmp_path / f"worker{i}"),
            steps,
            str(tmp_path / "shared"),
            {"cluster": cluster, "task": {"type": "worker", "index": i}},
            strategy="multi_worker",
        )
        for i in range(2)
    ]
    outputs = _wait(processes)
    # On a failure show every worker: the first one's error is often only
    # "the other task stopped".
    assert all(code == 0 for code, _ in outputs), "\n\n".join(
        f"worker {i} (exit {code}):\n{out[-2500:]}"
        for i, (code, out) in enumerate(outputs)
    )
    return [out for _, out in outputs]


def _finish(process):
    try:
        output, _ = process.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        output, _ = process.communicate()
    assert process.returncode == 0, output[-3000:]
    return output


def _weights(folder):
    model = keras.saving.load_model(os.path.join(folder, "model.keras"))
    return model.get_weights()


def _manifest(folder):
    with open(os.path.join(folder, "manifest.json"), encoding="utf-8") as f:
        return json.load(f)


@pytest.mark.slow
def test_two_workers_pretrain_checkpoint_and_resume_together(tmp_path):
    # The reference is one process doing the same two runs (4 updates,
    # then a rerun to 6 that resumes: the cosine schedule is set by each
    # run's --steps) under a one-device MirroredStrategy. Under any
    # strategy Keras' symbolic build draws one iteration of the dataset
    # first, which moves a reshuffling dataset on to its next order, so a
    # run without a strategy sees other (equally valid) batches.
    single = [str(tmp_path / "single"), str(tmp_path / "alone")]
    first = _pretrain(single[0], 4, single[1])
    _workers(tmp_path, steps=4)
    _finish(first)
    second = _pretrain(single[0], 6, single[1])
    # Only the chief wrote into the shared folder: updates 2 and 4 (micro-
    # batches = updates without accumulation).
    assert sorted(os.listdir(tmp_path / "shared")) == [
        "options.json",
        "step-000000002",
        "step-000000004",
    ]
    # Both workers rerun with more steps: they resume from update 4 of the
    # shared folder and train 2 more.
    outputs = _workers(tmp_path, steps=6)
    for output in outputs:
        # Rich wraps the long line: compare with whitespace collapsed.
        said = " ".join(output.split())
        assert "update 4 of 6 (micro-batch 4)" in said, output[-2000:]
    _finish(second)
    reference = _weights(single[0])
    for i in range(2):
        manifest = _manifest(tmp_path / f"worker{i}")
        assert manifest["resumes"][-1]["update"] == 4
        assert manifest["results"]["steps"] == 6
    worker0 = _weights(str(tmp_path / "worker0"))
    worker1 = _weights(str(tmp_path / "worker1"))
    for a, b, want in zip(worker0, worker1, reference):
        np.testing.assert_array_equal(a, b)
        # The same global batches as one process (MWMS splits each global
        # batch between the workers); only the summation order differs.
        np.testing.assert_allclose(a, want, rtol=1e-4, atol=1e-5)
    # The two updates after the resume did train: the final weights are
    # not those of the update-4 checkpoint.
    with np.load(tmp_path / "shared" / "step-000000004" / "state.npz") as s:
        at_4 = [s[k] for k in sorted(s.files) if k.startswith("model/")]
    changed = [
        np.abs(a - b).max() for a, b in zip(worker0, at_4) if a.shape == b.shape
    ]
    assert changed and max(changed) > 1e-4
