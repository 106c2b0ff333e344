"""Data parallelism across processes: scripts under tests/dist/ launched with ``mpiexec -n 2``.

Skipped when mpi4py or mpiexec is missing (``pip install 'minivolo[dist]'`` brings both). Every launch
has a timeout and its whole process group is killed on expiry, so nothing hangs.
"""
import os
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("mpi4py", reason="mpi4py is not installed (pip install 'minivolo[dist]')")
MPIEXEC = shutil.which("mpiexec", path=os.path.dirname(sys.executable)) or shutil.which("mpiexec")
if MPIEXEC is None:
    pytest.skip("no mpiexec next to the Python or on the PATH", allow_module_level=True)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DIST = os.path.join(ROOT, "tests", "dist")


def run(args: list, ranks: int | None = None, timeout: float = 240) -> subprocess.CompletedProcess:
    """``python ARGS`` (or ``mpiexec -n RANKS python ARGS``) from the repository root; fails the test
    with the output on a non-zero exit, and kills the whole process group after ``timeout`` seconds."""
    env = {**os.environ, "PYTHONPATH": ROOT, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, *map(str, args)]
    if ranks is not None:
        cmd = [MPIEXEC, "-n", str(ranks)] + cmd
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"{' '.join(cmd)} still running after {timeout} s\n{out}\n{err}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def run_ok(args: list, ranks: int | None = None, timeout: float = 240) -> subprocess.CompletedProcess:
    result = run(args, ranks, timeout)
    assert result.returncode == 0, f"{' '.join(result.args)} failed:\n{result.stdout}\n{result.stderr}"
    return result


def test_collectives_on_two_ranks():
    out = run_ok([os.path.join(DIST, "collectives.py")], ranks=2)
    assert sorted(out.stdout.split("\n")[:2]) == ["rank 0/2 ok", "rank 1/2 ok"]


def test_an_exception_on_one_rank_stops_every_rank():
    result = run([os.path.join(DIST, "fail.py")], ranks=2, timeout=120)
    assert result.returncode != 0
    assert "rank 1 of 2 failed (ValueError); stopping all ranks" in result.stderr
    assert "ValueError: rank 1 fails on purpose" in result.stderr
    assert "should never get here" not in result.stdout


def _steps(tmp_path, *options) -> tuple:
    """(the 1-process result, [rank 0's, rank 1's]) of tests/dist/step.py with ``options``."""
    script = os.path.join(DIST, "step.py")
    run_ok([script, tmp_path / "one.npz", *options])
    run_ok([script, tmp_path / "dp", *options], ranks=2)
    return np.load(tmp_path / "one.npz"), [np.load(tmp_path / f"dp.rank{r}.npz") for r in (0, 1)]


def test_one_step_averaged_gradient_equals_the_one_process_gradient(tmp_path):
    one, ranks = _steps(tmp_path, "--steps", "1", "--batch", "8")
    grads = [k for k in one.files if k.startswith("grad/")]
    assert len(grads) > 50  # every parameter of volo_nano
    for k in grads:
        np.testing.assert_array_equal(ranks[0][k], ranks[1][k])
        np.testing.assert_allclose(ranks[0][k], one[k], rtol=0, atol=1e-12, err_msg=k)
    assert max(np.abs(one[k]).max() for k in grads) > 1e-2  # real gradients, not zeros


def test_five_adamw_steps_equal_the_one_process_run(tmp_path):
    one, ranks = _steps(tmp_path, "--steps", "5", "--batch", "8")
    states = [k for k in one.files if k.startswith("state/")]
    assert any("running_mean" in k for k in states)  # SyncBatchNorm's statistics are compared too
    for k in states:
        np.testing.assert_array_equal(ranks[0][k], ranks[1][k], err_msg=k)
        np.testing.assert_allclose(ranks[0][k], one[k], rtol=0, atol=1e-10, err_msg=k)


def test_without_sync_batchnorm_the_ranks_differ_from_one_process(tmp_path):
    """The check above can fail: plain BatchNorm normalises each rank's half batch by itself."""
    one, ranks = _steps(tmp_path, "--steps", "1", "--batch", "8", "--no-sync-bn")
    diff = max(np.abs(ranks[0][k] - one[k]).max() for k in one.files if k.startswith("grad/"))
    assert diff > 1e-6
