"""One measurement per fresh process, for the benchmarks that need it.

A configuration's peak memory, device set-up (logical devices, a dtype
policy) or XLA cache must not leak into the next one, so the benchmark
scripts re-run themselves with `--child SPEC` (a JSON dict), and the child
prints its result as one JSON line. `run_child` is the parent's side.
"""

import json
import os
import subprocess
import sys

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_child(script, spec, timeout, env=None):
    """Runs `python script --child SPEC` and returns the dict it printed.

    Args:
        script: path of the benchmark script (its `--child` runs one spec).
        spec: JSON-able dict of the configuration.
        timeout: seconds before the child is given up.
        env: environment of the child, or `None` for this one's.

    Returns:
        The child's last JSON line as a dict, or `spec` with an `"error"`
        (a timeout, or the last line of the child's stderr).
    """
    command = [sys.executable, os.path.abspath(script), "--child"]
    command.append(json.dumps(spec))
    try:
        proc = subprocess.run(
            command,
            capture_output=True,
            text=True,
            cwd=REPO_ROOT,
            env=env,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        return {**spec, "error": f"timed out after {timeout} s"}
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
    return {**spec, "error": tail[-300:]}


def check_positive(parser, args, names):
    """`parser.error` for the first of `names` that is not positive."""
    for name in names:
        if getattr(args, name) <= 0:
            parser.error(f"--{name.replace('_', '-')} must be positive")
