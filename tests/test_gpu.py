"""The same code on CuPy: the GPU results equal the CPU ones. Skipped where no CUDA GPU is usable."""
import numpy as np
import pytest

import minivolo as mv
from minivolo import functional as F
from minivolo.models import create_model

pytestmark = pytest.mark.skipif(not mv.cuda_available(), reason="needs CuPy and a CUDA GPU "
                                "(cupy.cuda.is_available() is False here)")


def test_ops_on_gpu_match_cpu():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 9, 7))
    w = rng.standard_normal((4, 3, 3, 3))
    results = {}
    for device in ("cpu", "cuda"):
        xt = mv.Tensor(x, requires_grad=True).to(device)
        wt = mv.Tensor(w, requires_grad=True, device=device)
        y = F.gelu(F.conv2d(xt, wt, stride=2, padding=1))
        y = F.layer_norm(F.fold(F.unfold(y, 3, padding=1), y.shape[2:], 3, padding=1), y.shape[-1:])
        loss = F.softmax(y, dim=-1).log().mean()
        loss.backward()
        assert wt.grad.device == device
        results[device] = (loss.item(), wt.grad.numpy())
    np.testing.assert_allclose(results["cuda"][0], results["cpu"][0], rtol=1e-10)
    np.testing.assert_allclose(results["cuda"][1], results["cpu"][1], rtol=1e-8, atol=1e-12)


def test_volo_training_step_on_gpu_matches_cpu():
    x = np.random.default_rng(1).standard_normal((4, 1, 32, 32)).astype(np.float32)
    y = np.array([0, 1, 2, 3])
    grads = {}
    for device in ("cpu", "cuda"):
        mv.manual_seed(0)
        model = create_model("volo_nano", in_chans=1, num_classes=10).to(device)
        loss = F.cross_entropy(model(mv.Tensor(x, device=device)), mv.Tensor(y, device=device))
        loss.backward()
        grads[device] = {n: p.grad.numpy() for n, p in model.named_parameters()}
    for name, g in grads["cpu"].items():
        np.testing.assert_allclose(grads["cuda"][name], g, rtol=1e-3, atol=1e-5, err_msg=name)
