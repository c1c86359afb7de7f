"""Step-exact resume of a 2-worker MultiWorkerMirroredStrategy run.

tests/multi_worker_resume_train.py runs as two worker processes on
127.0.0.1 (each with its own `TF_CONFIG`) training a tiny GPT with
`StepCheckpoint` every 2 steps into one shared folder. One worker is
SIGKILLed mid-run, the other is left stuck or failing in its collective
and killed by the test; both are restarted with the same command (on
fresh ports) and must finish with the exact step count and the weights of
a single process trained on the same global batches. No
MultiWorkerMirroredStrategy is ever created in the pytest process.
"""

import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from keras_llm.callbacks import CheckpointManager
from tests.test_multi_worker import _env
from tests.test_multi_worker import _free_ports
from tests.test_multi_worker import _weights

SCRIPT = os.path.join(os.path.dirname(__file__), "multi_worker_resume_train.py")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT = 300
SURVIVOR_GRACE = 30  # seconds the other worker gets to fail on its own
TOTAL_STEPS = 12  # EPOCHS * STEPS_PER_EPOCH of the script


def _start(args, tf_config=None):
    return subprocess.Popen(
        [sys.executable, SCRIPT, *map(str, args)],
        env=_env(tf_config),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _start_workers(checkpoints, out_prefix, *extra):
    """Two workers on fresh free ports; worker i writes OUT_PREFIXi.npz."""
    cluster = {"worker": [f"127.0.0.1:{p}" for p in _free_ports(2)]}
    return [
        _start(
            [
                "--strategy",
                "multi_worker",
                "--checkpoints",
                checkpoints,
                "--out",
                f"{out_prefix}{i}.npz",
                *extra,
            ],
            {"cluster": cluster, "task": {"type": "worker", "index": i}},
        )  # fmt: skip
        for i in range(2)
    ]


def _finish(process, timeout=TIMEOUT):
    """`(returncode, output)`; a process still running at `timeout` is
    SIGKILLed (a worker stuck in a collective of a dead peer)."""
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        output, _ = process.communicate()
    return process.returncode, output


def _steps(output):
    lines = output.splitlines()
    return [int(line[5:]) for line in lines if line.startswith("STEP ")]


# (worker killed, extra arguments, last step it finished, checkpoint the
# restart resumes from)
CASES = {
    "worker1_killed_after_step_5": (
        1,
        ["--kill-at", 5, "--kill-worker", 1],
        5,
        4,
    ),
    "chief_killed_inside_save_8": (0, ["--kill-in-save", 8], 7, 6),
}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The final state of one uninterrupted single process on the same
    global batches (default strategy)."""
    folder = tmp_path_factory.mktemp("reference")
    process = _start(
        ["--checkpoints", folder / "ckpt", "--out", folder / "ref.npz"]
    )
    rc, output = _finish(process)
    assert rc == 0 and "DONE" in output, f"reference failed:\n{output[-3000:]}"
    return np.load(folder / "ref.npz")


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(CASES))
def test_worker_killed_then_both_restarted_finish_step_exact(
    tmp_path, case, reference
):
    killed, extra, last_step, resume_step = CASES[case]
    folder = str(tmp_path / "checkpoints")
    workers = _start_workers(folder, tmp_path / "killed", *extra)

    # The worker that kills itself dies with SIGKILL after `last_step`.
    rc, output = _finish(workers[killed])
    assert rc == -signal.SIGKILL, f"worker {killed} was not killed:\n{output}"
    assert _steps(output)[-1] == last_step, output[-3000:]
    # The other one cannot finish without it: it fails in (or hangs on) a
    # collective; a hung one is killed here.
    rc, output = _finish(workers[1 - killed], timeout=SURVIVOR_GRACE)
    assert rc != 0 and "DONE" not in output, output[-3000:]
    assert max(_steps(output)) <= last_step + 1, output[-3000:]

    manager = CheckpointManager(folder)
    names = sorted(os.listdir(folder))
    if "--kill-in-save" in extra:
        # The save killed before its rename left only a hidden temporary
        # folder, with the whole files, that no reader takes for a
        # checkpoint.
        unfinished = [n for n in names if n.startswith(".tmp-step-000000008")]
        assert len(unfinished) == 1, names
        assert sorted(os.listdir(os.path.join(folder, unfinished[0]))) == [
            "checkpoint.json",
            "state.npz",
        ]
        assert "step-000000008" not in names
    assert [s for s, _ in manager.checkpoints()][-1] == resume_step, names
    assert manager.latest()[1]["step"] == resume_step

    # Both restarted with the same command, on fresh ports.
    restarted = _start_workers(folder, tmp_path / "worker")
    for i, process in enumerate(restarted):
        rc, output = _finish(process)
        assert rc == 0 and "DONE" in output, (
            f"restarted worker {i} failed:\n{output[-3000:]}"
        )
        assert f"resumed from {folder}/step-{resume_step:09d} " in output
        assert _steps(output) == list(range(resume_step + 1, TOTAL_STEPS + 1))

    names = sorted(os.listdir(folder))
    assert not [n for n in names if n.startswith(".tmp-")], names
    assert names == ["step-000000008", "step-000000010", "step-000000012"]
    single = reference
    workers = [np.load(tmp_path / f"worker{i}.npz") for i in range(2)]
    assert int(single["replicas"]) == 1
    assert int(single["iterations"]) == TOTAL_STEPS
    for k, worker in enumerate(workers):
        assert int(worker["replicas"]) == 2
        # Exact step count: every update once, no batch repeated or lost.
        assert int(worker["iterations"]) == TOTAL_STEPS, k
        assert int(worker["batches"]) == TOTAL_STEPS, k
        assert int(worker["trained"]) == TOTAL_STEPS - resume_step, k
        assert list(worker["resumed_from"]) == [resume_step], k
    ref = _weights(single)
    initial = [single[f"initial{i}"] for i in range(len(ref))]
    moved = max(np.abs(a - b).max() for a, b in zip(ref, initial))
    assert moved > 1e-2, moved  # far more than the tolerance below
    for a, b in zip(_weights(workers[0]), _weights(workers[1])):
        np.testing.assert_array_equal(a, b)
    for i, (got, want) in enumerate(zip(_weights(workers[0]), ref)):
        np.testing.assert_allclose(
            got, want, rtol=0, atol=1e-5,
            err_msg=f"weight {i}: resumed 2-worker run vs single process",
        )  # fmt: skip
    # The loss of the two epochs after the resume is the reference's (the
    # restored metric totals make the shortened epoch's mean the same).
    np.testing.assert_allclose(
        workers[0]["loss"], single["loss"][-2:], rtol=0, atol=1e-5
    )


@pytest.mark.slow
def test_workers_resuming_from_different_checkpoints_fail_together(tmp_path):
    # Worker 0's folder holds checkpoints (steps 2 and 4, of a killed
    # single-process run), worker 1's none: resuming would train them on
    # other weights and batches, so both must stop with one clear error
    # instead of diverging or hanging.
    first = tmp_path / "ckpt_0"
    run = _start(
        ["--checkpoints", first, "--out", tmp_path / "x.npz"] + ["--kill-at", 5]
    )
    rc, output = _finish(run)
    assert rc == -signal.SIGKILL, output[-3000:]
    (tmp_path / "ckpt_1").mkdir()
    folder = str(tmp_path / "ckpt_{task}")
    for i, process in enumerate(_start_workers(folder, tmp_path / "w")):
        rc, output = _finish(process)
        assert rc != 0 and "DONE" not in output, output[-3000:]
        assert "resume from different checkpoints (steps none, 4)" in output, (
            f"worker {i}:\n{output[-3000:]}"
        )
        assert "STEP" not in output, output[-3000:]
    assert os.listdir(tmp_path / "ckpt_1") == []
