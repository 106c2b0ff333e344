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


# on the CPU in every mode (tests/dist/staging.py switches to the GPU stand-in itself)
ENV = {**os.environ, "PYTHONPATH": ROOT, "MINIVOLO_DEVICE": "cpu", "OPENBLAS_NUM_THREADS": "1",
       "OMP_NUM_THREADS": "1"}


def run(args: list, ranks: int | None = None, timeout: float = 240) -> subprocess.CompletedProcess:
    """``python ARGS`` (or ``mpiexec -n RANKS python ARGS``) from the repository root; fails the test
    with the output on a non-zero exit, and kills the whole process group after ``timeout`` seconds."""
    cmd = [sys.executable, *map(str, args)]
    if ranks is not None:
        cmd = [MPIEXEC, "-n", str(ranks)] + cmd
    proc = subprocess.Popen(cmd, cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
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


def _ranks_say(result, text: str) -> bool:
    """Both ranks printed ``rank R/2 <text>`` (their lines may interleave in mpiexec's output)."""
    return all(f"rank {r}/2 {text}" in result.stdout for r in (0, 1))


def test_collectives_on_two_ranks():
    out = run_ok([os.path.join(DIST, "collectives.py")], ranks=2)
    assert _ranks_say(out, "ok")


def test_device_arrays_go_through_host_copies_on_fakecupy():
    """The MPI path with CuPy arrays (no NCCL), on the strict stand-in: see tests/dist/staging.py."""
    if not os.path.isfile(os.path.join(ROOT, "tests", "fakecupy", "__init__.py")):
        pytest.skip("needs tests/fakecupy, the strict CuPy stand-in (issue 13)")
    out = run_ok([os.path.join(DIST, "staging.py")], ranks=2)
    assert _ranks_say(out, "staging ok")


def test_an_exception_on_one_rank_stops_every_rank():
    result = run([os.path.join(DIST, "fail.py")], ranks=2, timeout=120)
    assert result.returncode != 0  # and within the timeout: rank 0 did not wait forever
    assert "should never get here" not in result.stdout
    # MPI_Abort may cut the forwarding of rank 1's last lines; what arrives starts with its traceback
    assert result.stderr.startswith("Traceback") or "rank 1 of 2 failed (ValueError)" in result.stderr


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
    """With SyncBatchNorm, drop-path (masks drawn for the global batch) and mix-token (one box for the
    global batch, tokens pasted from the global flip, across ranks)."""
    one, ranks = _steps(tmp_path, "--steps", "5", "--batch", "8", "--drop-path", "0.3", "--mix-token")
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


# --- python -m minivolo train under mpiexec -------------------------------------------------------------
TRAIN = ["-m", "minivolo", "train", "--model", "volo_nano", "--dtype", "float64", "--sync-bn",
         "--drop-path", "0.1", "--epochs", "1", "--max-train", "512", "--max-test", "256"]


def _metrics(run_dir) -> list[dict]:
    with open(os.path.join(run_dir, "metrics.csv")) as f:
        header, *rows = [line.strip().split(",") for line in f]
    return [{k: float(v) for k, v in zip(header, row) if k != "seconds"} for row in rows]


def _bar_starts(stderr: str) -> int:
    """How many progress bars were drawn: each starts with one '0/N [00:00<?, ?it/s]' frame."""
    return sum(1 for frame in stderr.replace("\r", "\n").split("\n") if frame.endswith("?it/s]"))


def test_two_process_train_equals_one_process_at_the_same_global_batch(tmp_path):
    out = tmp_path / "runs"
    one = run_ok(TRAIN + ["--batch-size", "64", "--out", out, "--name", "one"], timeout=400)
    two = run_ok(TRAIN + ["--batch-size", "32", "--out", out / "dp"], ranks=2, timeout=400)
    (run_dir,) = list((out / "dp").iterdir())  # one run folder, named by process 0
    assert sorted(p.name for p in run_dir.iterdir()) == ["best.npz", "config.json", "curves.png", "last.npz",
                                                          "metrics.csv"]
    for result in (one, two):
        assert _bar_starts(result.stderr) == 1
        assert result.stdout.count("epoch   1/1  train loss") == 1 and result.stdout.count("parameters;") == 1
    assert "2 processes x batch 32" in two.stdout
    (m1,), (m2,) = _metrics(out / "one"), _metrics(run_dir)
    assert m1.keys() == m2.keys()
    for k in m1:
        assert abs(m1[k] - m2[k]) <= 1e-6, (k, m1[k], m2[k])


def test_two_process_token_labeling_equals_one_process(tmp_path):
    """Mix-token with token labels: each rank builds the targets of its rows (indices, crop boxes and
    flips sliced from the global batch's draws); the class targets are mixed with the global flip."""
    from minivolo.datasets import load_dataset
    from minivolo.token_labels import save_label_maps

    ds = load_dataset(train=True)
    logits = np.random.default_rng(0).standard_normal((len(ds), len(ds.classes), 4, 4)) * 2
    labels = tmp_path / "labels.npz"
    save_label_maps(labels, logits.astype(np.float16), ds, 32)
    args = ["-m", "minivolo", "train", "--model", "volo_nano", "--dtype", "float64", "--sync-bn", "--epochs", "1",
            "--max-train", "128", "--max-test", "64", "--quiet", "--mix-token", "--token-labels", labels,
            "--out", tmp_path]
    run_ok(args + ["--batch-size", "32", "--name", "one"])
    run_ok(args + ["--batch-size", "16", "--name", "two"], ranks=2)
    (m1,), (m2,) = _metrics(tmp_path / "one"), _metrics(tmp_path / "two")
    for k in m1:
        assert abs(m1[k] - m2[k]) <= 1e-9, (k, m1[k], m2[k])


def _descendants(pid: int) -> list[int]:
    children = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
            children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _rank_pid(launcher: int, rank: int) -> int | None:
    for pid in _descendants(launcher):
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                if f"PMI_RANK={rank}".encode() in f.read().split(b"\0"):
                    return pid
        except OSError:
            continue
    return None


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds the ranks through /proc")
def test_a_killed_process_stops_the_others_and_the_run_resumes(tmp_path):
    import time

    from minivolo.checkpoint import load_checkpoint
    small = ["--max-train", "256", "--max-test", "128", "--batch-size", "32", "--epochs", "2"]
    args = TRAIN[:-6] + small
    run_ok(args + ["--out", tmp_path, "--name", "straight"], ranks=2, timeout=400)

    cmd = [MPIEXEC, "-n", "2", sys.executable] + args + ["--out", str(tmp_path), "--name", "killed"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        written = tmp_path / "killed" / "metrics.csv"  # after last.npz, at the end of epoch 1
        deadline = time.monotonic() + 300
        while not written.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        victim = _rank_pid(proc.pid, 1)
        assert written.exists() and victim is not None, "the run did not reach the end of epoch 1"
        os.kill(victim, signal.SIGKILL)  # epoch 2 has begun
        start = time.monotonic()
        out, err = proc.communicate(timeout=120)  # no hang: the launcher stops rank 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    assert proc.returncode != 0 and time.monotonic() - start < 120
    assert "BAD TERMINATION" in out + err or "killed" in (out + err).lower()
    assert load_checkpoint(tmp_path / "killed")["epoch"] == 1  # intact (written atomically)

    wrong = run([*TRAIN[:2], "train", "--resume", tmp_path / "killed"], timeout=300)  # 1 process
    assert wrong.returncode == 2
    assert "was trained by 2 process(es)" in wrong.stderr and "mpiexec -n 2" in wrong.stderr

    run_ok([*TRAIN[:2], "train", "--resume", tmp_path / "killed"], ranks=2, timeout=400)
    assert _metrics(tmp_path / "killed") == _metrics(tmp_path / "straight")  # bit for bit
