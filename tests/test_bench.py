"""The benchmarks (``python -m minivolo bench``): no timings are asserted. Each benchmark's minivolo and
torch callables compute the same thing (checked on its small ``quick`` variant); the command's JSON,
header and errors. Single-threaded, seconds."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from minivolo import Tensor, backend, bench
from minivolo.cli import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def host(a) -> np.ndarray:
    """A minivolo Tensor or a torch tensor as a NumPy array."""
    if isinstance(a, Tensor):
        return a.numpy()
    return a.detach().cpu().numpy()


def assert_close(ours, theirs, rtol: float, what: str) -> None:
    """max |ours - theirs| <= rtol * max |theirs| (float32 through whole networks: relative to the scale)."""
    ours, theirs = host(ours), host(theirs)
    assert ours.shape == theirs.shape, f"{what}: shape {ours.shape} != torch {theirs.shape}"
    scale = max(float(np.abs(theirs).max()), 1e-30)
    err = float(np.abs(ours.astype(np.float64) - theirs).max())
    assert err <= rtol * scale, f"{what}: max error {err:.3g} > {rtol} * {scale:.3g}"


@pytest.fixture
def timm():
    from timm_shim import import_timm
    return import_timm()


@pytest.mark.parametrize("name", [n for n, b in bench.BENCHMARKS.items() if b.kind == "time"])
def test_minivolo_and_torch_compute_the_same(timm, name):
    """Outputs and every input gradient of the ops; loss and the stem's weight gradient of the steps
    (the same weights: minivolo's state_dict copied into timm's VOLO)."""
    ours, theirs = bench.BENCHMARKS[name].make(quick=True, device="cpu")
    assert theirs is not None, "torch and timm import, so the benchmark must have a torch side"
    mine, ref = ours(), theirs()
    assert len(mine) == len(ref) >= 2
    rtol = 5e-5 if name.endswith("_step") else 1e-5
    for i, (a, b) in enumerate(zip(mine, ref)):
        assert_close(a, b, rtol, f"{name} value {i}")


def test_memory_benchmark_runs_the_same_steps_in_fresh_processes(timm):
    ours, theirs = bench.BENCHMARKS["volo_d1_memory"].make(quick=True, device="cpu", threads=1)
    a, b = ours(), theirs()
    np.testing.assert_allclose(a["losses"], b["losses"], rtol=1e-4)
    # no optimizer step between them: the second step's loss is the first's (train-mode BatchNorm uses
    # the batch's statistics, so the updated running statistics do not enter)
    assert len(a["losses"]) == 2 and a["losses"][0] == a["losses"][1]
    # each library in its own fresh process: the minivolo one never imports torch, so at this small size
    # it peaks well below the torch one (a figure inherited from the parent process would be the same)
    assert 0 < a["peak_mib"] < b["peak_mib"] and a["sys_s"] >= 0 and b["sys_s"] >= 0


def test_every_benchmark_runs_without_torch(monkeypatch, capsys):
    """No torch: the torch columns are '-', the JSON fields None."""
    monkeypatch.setattr(bench, "_torch", lambda: None)
    for name in ("gelu", "volo_tiny_step", "outlook_attention"):
        assert bench.BENCHMARKS[name].make(quick=True, device="cpu")[1] is None
    result = bench.run(["gelu", "volo_tiny_step"], repeat=1, threads=1, quick=True)
    assert [r["torch"] for r in result["rows"]] == [None, None]
    assert [r["ratio"] for r in result["rows"]] == [None, None]
    out = capsys.readouterr().out
    assert "torch is not installed: torch columns are '-'" in out
    gelu_line = next(line for line in out.splitlines() if line.startswith("gelu"))
    assert gelu_line.split()[2:4] == ["-", "-"]


def test_json_file_has_the_header_and_the_rows(tmp_path, capsys):
    path = tmp_path / "bench.json"
    assert main(["bench", "gelu", "volo_tiny_step", "--quick", "--repeat", "2", "--threads", "1",
                 "--json", str(path)]) == 0
    result = json.loads(path.read_text())
    header = result["header"]
    for key in ("cpu_cores", "numpy", "blas", "OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "torch", "torch_threads",
                "timm", "device", "repeat", "threads"):
        assert key in header, key
    assert header["numpy"] == np.__version__ and header["repeat"] == 2 and header["threads"] == 1
    assert [r["name"] for r in result["rows"]] == ["gelu", "volo_tiny_step"]
    for row in result["rows"]:
        assert row["unit"] == "ms" and row["minivolo"] > 0 and row["numpy_blas_threads"] == 1
        if row["torch"] is not None:
            assert row["ratio"] == pytest.approx(row["minivolo"] / row["torch"]) and row["torch_threads"] == 1
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith(f"# {os.cpu_count()} CPU cores; NumPy {np.__version__}")
    assert any(line.startswith("volo_tiny_step") for line in out.splitlines())


def test_json_path_in_a_missing_folder_fails_before_running(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(bench, "_run_all", lambda *args: pytest.fail("ran the benchmarks"))
    assert main(["bench", "gelu", "--quick", "--json", str(tmp_path / "no" / "bench.json")]) == 2
    assert "--json: cannot write" in capsys.readouterr().err


def test_json_to_stdout_moves_the_table_to_stderr(capsys):
    assert main(["bench", "softmax", "--quick", "--repeat", "1", "--threads", "1", "--json", "-"]) == 0
    captured = capsys.readouterr()
    assert [r["name"] for r in json.loads(captured.out)["rows"]] == ["softmax"]
    assert "softmax" in captured.err and "CPU cores" in captured.err


def test_unknown_names_are_a_clear_error(capsys):
    assert main(["bench", "gelu", "nope", "--quick"]) == 2
    err = capsys.readouterr().err
    assert "unknown benchmark(s) 'nope'" in err and "volo_d1_step" in err and "gelu" not in err.split(";")[0]
    with pytest.raises(ValueError, match="do not run on device 'cuda'"):
        bench.resolve(["gelu"], "cuda")
    assert {b.name for b in bench.resolve(None, "cuda")} == {"volo_tiny_step", "volo_d1_step"}


def test_cuda_without_a_gpu_is_minivolos_error(monkeypatch, capsys):
    monkeypatch.setattr(backend, "cuda_available", lambda: False)
    assert main(["bench", "--device", "cuda", "--quick"]) == 2
    assert "device 'cuda' requested but" in capsys.readouterr().err


def test_header_reports_the_blas_library(monkeypatch):
    threadpoolctl = pytest.importorskip("threadpoolctl")
    blas = [i for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas"]
    env = bench.environment()
    assert [(b["internal_api"], b["architecture"], b["filepath"]) for b in env["blas"]] == \
        [(b["internal_api"], b.get("architecture"), b["filepath"]) for b in blas]
    with bench._threads(2):  # --threads reaches NumPy's BLAS, and is undone afterwards
        assert {b["num_threads"] for b in bench.environment()["blas"]} == {2}
    assert [b["num_threads"] for b in bench.environment()["blas"]] == [b["num_threads"] for b in blas]
    line = bench._header_lines(env)[0]
    assert f"{blas[0]['internal_api']} {blas[0]['version']}, kernel {blas[0]['architecture']}" in line

    monkeypatch.setenv("OPENBLAS_CORETYPE", "Haswell")
    monkeypatch.delenv("OPENBLAS_L2_SIZE", raising=False)
    lines = bench._header_lines(bench.environment())
    assert "OPENBLAS_CORETYPE is set to Haswell; OPENBLAS_L2_SIZE is not set" in lines[1]
    monkeypatch.setitem(sys.modules, "threadpoolctl", None)  # not installed: said so
    assert "threadpoolctl is not installed" in bench._header_lines(bench.environment())[0]


def test_timm_imports_without_torchvision():
    """In a fresh process without torchvision, bench's placeholders let timm's VOLO import and run."""
    pytest.importorskip("torch")
    pytest.importorskip("timm")
    code = ("import sys, importlib.util, minivolo.bench as b\n"
            "assert importlib.util.find_spec('torchvision') is None, 'torchvision is installed'\n"
            "timm = b._import_timm(); import torch\n"
            "m = timm.models.volo.VOLO(**b.TINY)\n"
            "print(tuple(m(torch.zeros(1, 3, 32, 32)).shape), sys.modules['torchvision'].__name__)\n"
            "try:\n    sys.modules['torchvision.transforms'].ToTensor()\nexcept RuntimeError as e:\n    print(e)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                          env=dict(os.environ, PYTHONPATH=ROOT))
    if "torchvision is installed" in done.stderr:
        pytest.skip("torchvision is installed: the placeholders are not used")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "(1, 10) torchvision"
    assert "placeholder (torchvision is not installed)" in lines[1]


def test_cuda_rows_synchronise_every_call_and_report_the_pool_peak(monkeypatch, capsys):
    """The CUDA bookkeeping without a GPU: a stand-in benchmark and backend calls recorded in order."""
    events = []
    monkeypatch.setattr(bench, "_torch", lambda: None)
    monkeypatch.setattr(backend, "device_name", lambda: "Test GPU")
    monkeypatch.setattr(backend, "synchronize", lambda device="cuda": events.append(("sync", device)))
    pool = {"bytes": 0}

    def pool_bytes(free_cached=False):
        events.append(("pool", free_cached))
        return pool["bytes"]

    def ours():
        events.append(("call",))
        pool["bytes"] = 3 * 2 ** 20

    monkeypatch.setattr(backend, "device_memory_pool_bytes", pool_bytes)
    monkeypatch.setitem(bench.BENCHMARKS, "fake",
                        bench.Benchmark("fake", lambda quick, device: (ours, None), "time", ("cuda",)))
    row = bench.run(["fake"], repeat=3, device="cuda", threads=1)["rows"][0]
    assert events == [("call",), ("sync", "cuda")] * 4 + [("pool", True), ("call",), ("sync", "cuda"), ("pool", False)]
    assert row["minivolo_peak_mib"] == 3 and row["torch_peak_mib"] is None and row["torch"] is None
    out = capsys.readouterr().out
    assert "# device cuda: Test GPU; torch on CUDA: False" in out
    assert out.splitlines()[-1].split()[-2:] == ["3", "-"]
