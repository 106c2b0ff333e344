import os
import sys

# One BLAS/OpenMP thread per test process: pytest-xdist already runs one process per core, and the
# spin-waiting thread pools of OpenBLAS and torch starve each other when oversubscribed (a 20x slowdown
# measured on 2 cores). Set before NumPy and torch load their thread pools.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402
import pytest

sys.path.insert(0, os.path.dirname(__file__))


def pytest_addoption(parser):
    parser.addoption("--fake-gpu", action="store_true",
                     help="run the suite with device 'cuda' on fakecupy, the strict CuPy stand-in in tests/fakecupy "
                          "(MINIVOLO_DEVICE=cuda)")


def pytest_configure(config):
    """--fake-gpu: point minivolo's backend at fakecupy and make 'cuda' the default device. Runs in every
    xdist worker too (they receive the option), before any test module is imported."""
    config.addinivalue_line("markers", "cpu_only(reason): a test that cannot run in --fake-gpu mode")
    if config.getoption("--fake-gpu"):
        import fakecupy
        from minivolo import backend

        backend.use_cupy(fakecupy, fakecupy.cupyx)
        assert backend.cuda_available()
        os.environ["MINIVOLO_DEVICE"] = "cuda"
        # subprocesses (the CLI, notebook kernels) switch too, through fakecupy/site/sitecustomize.py
        os.environ["MINIVOLO_FAKE_GPU"] = "1"
        site = os.path.join(os.path.dirname(__file__), "fakecupy", "site")
        os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (site, os.environ.get("PYTHONPATH")) if p)


def pytest_collection_modifyitems(config, items):
    if not config.getoption("--fake-gpu"):
        return
    for item in items:
        marker = item.get_closest_marker("cpu_only")
        if marker is not None:
            reason = marker.kwargs.get("reason") or (marker.args[0] if marker.args else "")
            item.add_marker(pytest.mark.skip(reason=f"CPU only: {reason}"))


@pytest.fixture
def on_fakecupy():
    """minivolo's backend pointed at fakecupy for one test, in either mode; restored afterwards."""
    import fakecupy
    from minivolo import backend

    saved = backend._cupy, backend._cupyx
    backend.use_cupy(fakecupy, fakecupy.cupyx)
    yield fakecupy
    backend.use_cupy(*saved)


@pytest.fixture
def fake_gpu(request) -> bool:
    """True in --fake-gpu mode."""
    return request.config.getoption("--fake-gpu")


@pytest.fixture(autouse=True)
def _seed():
    """Every test starts from the same random state."""
    import minivolo
    minivolo.manual_seed(0)
    np.random.seed(0)
