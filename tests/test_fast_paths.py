"""Fast paths against their readable references (no torch): each fused or fast kernel must give the
reference's numbers, in float64 to 1e-12, forward and backward."""
import numpy as np
import pytest

from minivolo.functional import conv
from minivolo.tensor import Tensor


def _conv2d(impl, x, w, b, g, monkeypatch, **kwargs):
    monkeypatch.setattr(conv, "CONV2D_IMPL", impl)
    xt, wt, bt = (Tensor(a, requires_grad=True) for a in (x, w, b))
    out = conv.conv2d(xt, wt, bt, **kwargs)
    out.backward(g)
    return out.numpy(), xt.grad.numpy(), wt.grad.numpy(), bt.grad.numpy()


@pytest.mark.parametrize("B, C, H, W, O, k, kwargs", [
    (2, 8, 9, 11, 6, 3, dict(padding=1)),
    (2, 8, 9, 11, 6, 3, dict(padding=0)),
    (1, 6, 10, 7, 4, (3, 2), dict(padding=(2, 1), dilation=(2, 3))),
    (3, 8, 8, 8, 4, 4, dict(padding="same")),                       # even kernel: asymmetric padding
    (2, 8, 7, 9, 6, 3, dict(padding="same", dilation=2)),
    (2, 8, 9, 9, 12, 3, dict(padding=1, groups=4)),
    (2, 6, 7, 7, 6, 5, dict(padding=2, groups=6)),                   # depthwise
    (2, 4, 6, 5, 3, 1, dict()),                                      # 1x1
    (1, 5, 4, 4, 2, 4, dict()),                                      # the kernel covers the whole image
    (2, 8, 9, 11, 6, 3, dict(padding=1, stride=2)),                  # stride 2: taps falls back to im2col
])
def test_conv2d_taps_matches_im2col(B, C, H, W, O, k, kwargs, monkeypatch):
    rng = np.random.default_rng(0)
    kh, kw = (k, k) if isinstance(k, int) else k
    x = rng.standard_normal((B, C, H, W))
    w = rng.standard_normal((O, C // kwargs.get("groups", 1), kh, kw))
    b = rng.standard_normal(O)
    shape = conv.conv2d(Tensor(x), Tensor(w), **kwargs).shape
    g = rng.standard_normal(shape)
    reference = _conv2d("im2col", x, w, b, g, monkeypatch, **kwargs)
    fast = _conv2d("taps", x, w, b, g, monkeypatch, **kwargs)
    for name, r, f in zip(("out", "dx", "dW", "db"), reference, fast):
        assert f.shape == r.shape and f.dtype == r.dtype == np.float64, name
        np.testing.assert_allclose(f, r, rtol=0, atol=1e-12, err_msg=name)


def test_conv2d_auto_picks_taps_for_the_stem_shape(monkeypatch):
    """auto runs the taps kernel for a wide stride-1 conv on a large map, and the result is the reference's."""
    rng = np.random.default_rng(1)
    x, w = rng.standard_normal((1, 32, 34, 34)), rng.standard_normal((8, 32, 3, 3))
    calls = []
    taps = conv._conv2d_taps
    monkeypatch.setattr(conv, "_conv2d_taps", lambda *a: calls.append(1) or taps(*a))
    out = conv.conv2d(Tensor(x), Tensor(w), padding=1)
    monkeypatch.setattr(conv, "CONV2D_IMPL", "im2col")
    np.testing.assert_allclose(out.numpy(), conv.conv2d(Tensor(x), Tensor(w), padding=1).numpy(), rtol=0, atol=1e-12)
    assert calls == [1]


def test_conv2d_taps_float32_stays_float32(monkeypatch):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 8, 6, 6)).astype(np.float32)
    w = rng.standard_normal((4, 8, 3, 3)).astype(np.float32)
    b = rng.standard_normal(4).astype(np.float32)
    g = rng.standard_normal((2, 4, 6, 6)).astype(np.float32)
    fast = _conv2d("taps", x, w, b, g, monkeypatch, padding=1)
    reference = _conv2d("im2col", x, w, b, g, monkeypatch, padding=1)
    for f, r in zip(fast, reference):
        assert f.dtype == np.float32
        np.testing.assert_allclose(f, r, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_erf_split_over_threads_matches_one_call(dtype, monkeypatch):
    """gelu's erf split over threads gives the very values of one backend.erf call, in the input's dtype."""
    from minivolo import backend
    from minivolo.functional import nn
    x = np.random.default_rng(3).standard_normal((3, 70001)).astype(dtype) * 3  # odd size: uneven chunks
    monkeypatch.setattr(nn, "_ERF_SPLIT_MIN", 1)
    for threads in (2, 3):
        monkeypatch.setattr(nn, "ERF_THREADS", threads)
        out = nn._erf(x)
        assert out.dtype == dtype and out.shape == x.shape
        np.testing.assert_array_equal(out, backend.erf(x))
