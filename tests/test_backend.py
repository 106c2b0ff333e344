"""minivolo.backend: device names, the GPU check, the switch to the CuPy stand-in."""
import types

import numpy as np
import pytest

import minivolo as mv
from minivolo import backend


def test_cuda_index_of_the_current_gpu_is_cuda(on_fakecupy):
    assert backend._check_device("cuda:0") == "cuda" == backend._check_device("CUDA")
    assert mv.Tensor(np.ones(2), device="cuda:0").device == "cuda"


def test_cuda_index_of_another_gpu_is_refused_clearly(on_fakecupy):
    """'cuda:1' used to mean the current GPU silently."""
    with pytest.raises(ValueError, match=r"device 'cuda:1': minivolo runs on one GPU, the current one \(cuda:0\); "
                                         r"select GPU 1 with CUDA_VISIBLE_DEVICES=1"):
        mv.Tensor(np.ones(2)).to("cuda:1")
    for bad in ("cuda:x", "cpu:0", "gpu"):
        with pytest.raises(ValueError, match=r"device must be one of \('cpu', 'cuda'\) \(or 'cuda:N'\), got"):
            backend._check_device(bad)


def _cupy_without_kernels(error):
    """A CuPy whose driver answers (is_available) but whose kernels fail, like a too-old driver."""
    def arange(*args, **kwargs):
        raise error
    return types.SimpleNamespace(cuda=types.SimpleNamespace(is_available=lambda: True), arange=arange)


def test_a_gpu_that_cannot_run_kernels_is_unavailable_and_says_why(on_fakecupy, monkeypatch):
    saved = backend._cupy, backend._cupyx
    backend.use_cupy(_cupy_without_kernels(RuntimeError("cudaErrorUnsupportedPtxVersion")), None)
    try:
        assert not backend.cuda_available()
        monkeypatch.setenv("MINIVOLO_DEVICE", "cuda")
        with pytest.raises(RuntimeError, match=r"device 'cuda' requested but CuPy sees a GPU but cannot run a "
                                               r"kernel on it \(RuntimeError: cudaErrorUnsupportedPtxVersion\)"):
            backend.default_device()
    finally:
        backend.use_cupy(*saved)
    assert backend.cuda_available()  # the stand-in runs its test kernel


def test_without_cupy_the_error_says_how_to_install(on_fakecupy):
    saved = backend._cupy, backend._cupyx
    backend.use_cupy(None, None)
    try:
        with pytest.raises(RuntimeError, match=r"CuPy is not installed \(pip install 'minivolo\[gpu\]'\)"):
            backend.array_module("cuda")
    finally:
        backend.use_cupy(*saved)


def test_use_cupy_switches_array_module_and_generator(on_fakecupy):
    assert backend.array_module("cuda") is on_fakecupy and backend.array_module("cpu") is np
    x = backend.to_device(np.arange(3.0), "cuda")
    assert isinstance(x, on_fakecupy.ndarray) and backend.device_of(x) == "cuda"
    assert backend.get_array_module(x) is on_fakecupy
    np.testing.assert_array_equal(backend.to_numpy(x), np.arange(3.0))
    assert isinstance(backend.generator("cuda").random(2), on_fakecupy.ndarray)
