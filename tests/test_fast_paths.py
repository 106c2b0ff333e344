"""Fast paths against their readable references (no torch): each fused or fast kernel must give the
reference's numbers, forward and backward: in float64 to 1e-12; the float32-only kernels (the chunked GELU)
to a few float32 ulp, and against float64 mathematics."""
import numpy as np
import pytest

from minivolo.functional import conv, nn
from minivolo.tensor import Tensor


def _conv2d(impl, x, w, b, g, monkeypatch, **kwargs):
    monkeypatch.setattr(conv, "CONV2D_IMPL", impl)
    xt, wt, bt = (Tensor(a, requires_grad=True, device="cpu") for a in (x, w, b))
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
    (2, 4, 7, 7, 3, 3, dict(padding=3)),                             # padding beyond the kernel's reach
    (2, 8, 9, 11, 6, 3, dict(padding=1, stride=2)),                  # stride 2: dx by col2im per block
    (3, 4, 13, 12, 5, 3, dict(padding=2, stride=(2, 3), dilation=2)),
    (2, 6, 8, 8, 4, 2, dict(stride=2, groups=2)),                    # disjoint windows (a patch projection)
    # (C/groups)*kw >= 64: the columns split by kernel row (_by_kernel_rows)
    (2, 24, 9, 11, 6, 3, dict(padding=1)),
    (3, 24, 7, 9, 6, 3, dict(padding=1, dilation=2)),
    (2, 32, 9, 10, 6, (3, 2), dict(padding=(2, 0))),
    (2, 48, 8, 8, 4, 3, dict(padding="same", groups=2)),
    (2, 24, 7, 7, 5, 3, dict(padding=3)),                            # bands of padding only
    (2, 24, 9, 11, 6, 3, dict(padding=1, stride=(1, 2))),            # by rows with a horizontal stride
    (2, 24, 9, 11, 6, 3, dict(padding=1, stride=(2, 1))),            # vertical stride 2: one part
])
@pytest.mark.parametrize("chunk", [1, 50, 700, 1 << 18])              # one row per block ... whole batch
def test_conv2d_chunked_matches_im2col(B, C, H, W, O, k, kwargs, chunk, monkeypatch):
    """The chunked kernel, whatever the blocks (bands of rows, several images, all of them), gives the
    reference's output and gradients."""
    rng = np.random.default_rng(0)
    kh, kw = (k, k) if isinstance(k, int) else k
    x = rng.standard_normal((B, C, H, W))
    w = rng.standard_normal((O, C // kwargs.get("groups", 1), kh, kw))
    b = rng.standard_normal(O)
    shape = conv.conv2d(Tensor(x, device="cpu"), Tensor(w, device="cpu"), **kwargs).shape
    g = rng.standard_normal(shape)
    reference = _conv2d("im2col", x, w, b, g, monkeypatch, **kwargs)
    monkeypatch.setattr(conv, "CONV_CHUNK", chunk)
    monkeypatch.setattr(conv, "_chunks_pay", lambda x, window: True)
    fast = _conv2d("auto", x, w, b, g, monkeypatch, **kwargs)
    for name, r, f in zip(("out", "dx", "dW", "db"), reference, fast):
        assert f.shape == r.shape and f.dtype == r.dtype == np.float64, name
        np.testing.assert_allclose(f, r, rtol=0, atol=1e-12, err_msg=name)


def test_conv2d_chunked_skips_unneeded_gradients(monkeypatch):
    """Only the gradients asked for are computed (x without requires_grad: no dx; W frozen: no dW)."""
    rng = np.random.default_rng(4)
    x, w = rng.standard_normal((2, 4, 6, 6)), rng.standard_normal((3, 4, 3, 3))
    monkeypatch.setattr(conv, "_chunks_pay", lambda x, window: True)
    for need_x, need_w in ((True, False), (False, True)):
        xt, wt = Tensor(x, requires_grad=need_x, device="cpu"), Tensor(w, requires_grad=need_w, device="cpu")
        conv.conv2d(xt, wt, padding=1).sum().backward()
        assert (xt.grad is not None, wt.grad is not None) == (need_x, need_w)
        monkeypatch.setattr(conv, "CONV2D_IMPL", "im2col")
        xr, wr = Tensor(x, requires_grad=need_x, device="cpu"), Tensor(w, requires_grad=need_w, device="cpu")
        conv.conv2d(xr, wr, padding=1).sum().backward()
        monkeypatch.setattr(conv, "CONV2D_IMPL", "auto")
        got, want = (xt.grad, xr.grad) if need_x else (wt.grad, wr.grad)
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=0, atol=1e-12)


@pytest.mark.parametrize("shape, weight, kwargs, chunked", [
    ((2, 32, 48, 48), (8, 32, 3, 3), dict(padding=1), True),          # the stem's 3x3 conv: overlapping windows
    ((4, 3, 96, 96), (8, 3, 7, 7), dict(padding=3, stride=2), True),  # the stem's first conv
    ((2, 32, 48, 48), (16, 32, 4, 4), dict(stride=4), False),         # patch projection: disjoint windows
    ((2, 8, 6, 6), (8, 8, 3, 3), dict(padding=1), False),             # small: one block would hold it all
])
def test_conv2d_auto_picks_chunked_where_it_pays(shape, weight, kwargs, chunked, monkeypatch):
    """auto runs the chunked kernel for large convolutions with overlapping windows and the reference
    otherwise, with the reference's result either way."""
    rng = np.random.default_rng(1)
    x, w = rng.standard_normal(shape), rng.standard_normal(weight)
    calls = []
    kernel = conv._conv2d_chunked
    monkeypatch.setattr(conv, "_conv2d_chunked", lambda *a: calls.append(1) or kernel(*a))
    x, w = Tensor(x, device="cpu"), Tensor(w, device="cpu")
    out = conv.conv2d(x, w, **kwargs)
    monkeypatch.setattr(conv, "CONV2D_IMPL", "im2col")
    np.testing.assert_allclose(out.numpy(), conv.conv2d(x, w, **kwargs).numpy(), rtol=0, atol=1e-12)
    assert calls == ([1] if chunked else [])


@pytest.mark.parametrize("shape, weight, kwargs, parts", [
    ((8, 64, 112, 112), (64, 64, 3, 3), dict(padding=1), 3),           # D1's 3x3 stem conv: by kernel row
    ((8, 3, 224, 224), (64, 3, 7, 7), dict(padding=3, stride=2), 1),   # its first conv: whole columns
])
def test_conv2d_chunked_splits_by_kernel_rows_at_the_stem(shape, weight, kwargs, parts):
    """The stem's 3x3 conv (and its dx, the same conv of the gradient) runs by kernel row, the 7x7
    stride-2 conv on whole columns (3 channels: row parts would make matmuls of inner size 21)."""
    pads = conv._symmetric(conv._pair(kwargs["padding"]))
    window = conv._window("conv2d", shape[2:], weight[2:], (1, 1), conv._pair(kwargs.get("stride", 1)), pads)
    assert len(conv._kernel_parts(window, weight[1])) == parts


def test_conv2d_chunked_float32_stays_float32(monkeypatch):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 8, 6, 6)).astype(np.float32)
    w = rng.standard_normal((4, 8, 3, 3)).astype(np.float32)
    b = rng.standard_normal(4).astype(np.float32)
    g = rng.standard_normal((2, 4, 6, 6)).astype(np.float32)
    reference = _conv2d("im2col", x, w, b, g, monkeypatch, padding=1)
    monkeypatch.setattr(conv, "_chunks_pay", lambda x, window: True)
    fast = _conv2d("auto", x, w, b, g, monkeypatch, padding=1)
    for f, r in zip(fast, reference):
        assert f.dtype == np.float32
        np.testing.assert_allclose(f, r, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_erf_split_over_threads_matches_one_call(dtype, monkeypatch):
    """erf split over threads gives the very values of one backend.erf call, in the input's dtype."""
    from minivolo import backend
    x = np.random.default_rng(3).standard_normal((3, 70001)).astype(dtype) * 3  # odd size: uneven parts
    monkeypatch.setattr(nn, "_SPLIT_MIN", 1)
    for threads in (2, 3):
        monkeypatch.setattr(nn, "ELEMENTWISE_THREADS", threads)
        out = nn._erf(x)
        assert out.dtype == dtype and out.shape == x.shape
        np.testing.assert_array_equal(out, backend.erf(x))


# --- chunked float32 GELU against the reference and against float64 mathematics ---------------------
SPECIALS = [0.0, -0.0, 1e-45, -1e-45, 1e-38, -1e-38, 1e-30, 3e-8, -3e-8, 5.6, 5.7, -5.7, 9.0, -9.0, 40.0, -40.0,
            1e30, -1e30, np.finfo(np.float32).max, -np.finfo(np.float32).max, np.inf, -np.inf]


@pytest.mark.parametrize("threads", [1, 2])
def test_normal_cdf_float32_is_within_4_ulp(threads, monkeypatch):
    """Phi(x) of the rational approximation in float32, chunk by chunk, against float64's ndtr on a dense
    grid: absolute error <= 4 ulp of [0.5, 1) (2.4e-7); +-0 and tiny x give 0.5, +-inf 1 and 0, NaN stays NaN."""
    from scipy.special import ndtr
    monkeypatch.setattr(nn, "CHUNK", 4096)
    monkeypatch.setattr(nn, "_SPLIT_MIN", 1)
    monkeypatch.setattr(nn, "ELEMENTWISE_THREADS", threads)
    x = np.concatenate([np.linspace(-12, 12, 1_000_001), SPECIALS, [np.nan]]).astype(np.float32)
    cdf = np.empty_like(x)
    nn._chunked(lambda _, x, out, *scratch: nn._normal_cdf_float32(x, out, *scratch), [x, cdf], scratch=((),) * 3)
    ref = ndtr(x.astype(np.float64))
    assert cdf.dtype == np.float32
    assert np.isnan(cdf[-1]) and not np.isnan(cdf[:-1]).any()
    err = np.abs(cdf[:-1] - ref[:-1])
    assert err.max() <= 4 * 2.0 ** -24, (err.max(), x[err.argmax()])
    tiny = np.abs(x) < 1e-7
    assert (cdf[tiny] == 0.5).all()
    assert cdf[x == np.inf].tolist() == [1.0] and cdf[x == -np.inf].tolist() == [0.0]


def _gelu(x, g, impl, monkeypatch):
    monkeypatch.setattr(nn, "GELU_IMPL", impl)
    t = Tensor(x, requires_grad=True, device="cpu")
    out = nn.gelu(t)
    out.backward(g)
    return out.numpy(), t.grad.numpy()


@pytest.mark.parametrize("shape", [(7,), (3, 5000), (2, 130, 300)])
@pytest.mark.parametrize("threads", [1, 2])
def test_gelu_chunked_matches_reference(shape, threads, monkeypatch):
    """float32 GELU by chunks (auto) against x Phi(x) with SciPy's erf (reference), forward and backward,
    for arrays shorter and longer than a chunk, split over threads or not."""
    monkeypatch.setattr(nn, "CHUNK", 4096)
    monkeypatch.setattr(nn, "_SPLIT_MIN", 1)
    monkeypatch.setattr(nn, "ELEMENTWISE_THREADS", threads)
    rng = np.random.default_rng(4)
    x = (rng.standard_normal(shape) * 3).astype(np.float32)
    x.reshape(-1)[:len(SPECIALS)] = SPECIALS[:x.size]
    g = rng.standard_normal(shape).astype(np.float32)
    with np.errstate(all="ignore"):  # inf * 0 and the like, in both alike
        fast, reference = _gelu(x, g, "auto", monkeypatch), _gelu(x, g, "reference", monkeypatch)
    for name, f, r in zip(("out", "dx"), fast, reference):
        assert f.dtype == np.float32 and f.shape == shape, name
        np.testing.assert_allclose(f, r, rtol=1e-6, atol=1e-6, err_msg=name)


def test_gelu_chunked_reads_a_strided_input_and_gradient(monkeypatch):
    """A transposed (non-contiguous) input and a broadcast gradient give the reference's numbers."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((300, 200)).astype(np.float32).T
    g = np.broadcast_to(rng.standard_normal(300).astype(np.float32), x.shape)
    fast, reference = _gelu(x, g, "auto", monkeypatch), _gelu(x, g, "reference", monkeypatch)
    for f, r in zip(fast, reference):
        np.testing.assert_allclose(f, r, rtol=1e-6, atol=1e-6)


def test_gelu_float64_keeps_the_reference(monkeypatch):
    """float64 never takes the float32 kernel (its parity to torch is SciPy's exact erf)."""
    monkeypatch.setattr(nn, "_gelu_float32", lambda t: pytest.fail("float64 took the float32 kernel"))
    x = np.linspace(-6, 6, 101)
    from scipy.special import ndtr
    out = nn.gelu(Tensor(x, device="cpu")).numpy()
    assert out.dtype == np.float64
    np.testing.assert_allclose(out, x * ndtr(x), rtol=1e-14, atol=1e-15)  # 1 + erf cancels for x < 0


@pytest.mark.parametrize("op, fast", [("gelu", "_gelu_float32"), ("layer_norm", "_layer_norm_rows"),
                                      ("softmax", "_softmax_rows"), ("batch_norm", "_batch_norm_rows")])
def test_on_the_gpu_the_ops_keep_their_whole_array_kernels(op, fast, on_fakecupy, monkeypatch):
    """On CuPy (fakecupy) float32 gelu, layer_norm, softmax and batch_norm run the whole-array references,
    never the host's chunk loops, and give their numbers."""
    monkeypatch.setattr(nn, fast, lambda *a: pytest.fail("a device array took the host chunk loop"))
    x = np.linspace(-6, 6, 120).astype(np.float32).reshape(10, 12)
    fn = {"gelu": nn.gelu, "layer_norm": lambda t: nn.layer_norm(t, 12), "softmax": lambda t: nn.softmax(t, -1),
          "batch_norm": lambda t: nn.batch_norm(t, None, None, training=True)}[op]
    t = Tensor(x, requires_grad=True, device="cuda")
    out = fn(t)
    out.sum().backward()
    assert out.device == "cuda" and out.dtype == np.float32 and t.grad.device == "cuda"
    monkeypatch.undo()
    np.testing.assert_allclose(out.numpy(), fn(Tensor(x, device="cpu")).numpy(), rtol=1e-5, atol=1e-6)


def test_on_the_gpu_conv2d_keeps_the_im2col_kernel(on_fakecupy, monkeypatch):
    """On CuPy (fakecupy) conv2d runs the whole-array reference, never the host's block loop."""
    monkeypatch.setattr(conv, "_conv2d_chunked", lambda *a: pytest.fail("a device array took the host block loop"))
    rng = np.random.default_rng(5)
    x, w = rng.standard_normal((4, 32, 48, 48)).astype(np.float32), rng.standard_normal((8, 32, 3, 3)).astype(np.float32)
    xt, wt = Tensor(x, requires_grad=True, device="cuda"), Tensor(w, requires_grad=True, device="cuda")
    out = conv.conv2d(xt, wt, padding=1)
    out.sum().backward()
    assert out.device == "cuda" and xt.grad.device == "cuda" and wt.grad.device == "cuda"


# --- layer_norm by blocks of rows against _normalize over whole arrays ------------------------------
def _assert_blocks_match(names, fast, reference, dtype):
    """The blocked kernel's results (in dtype) equal the float64 reference's: 1e-12 in float64; in
    float32 within rtol 1e-5, atol 5e-5. None (no gradient) where the reference has None."""
    tol = dict(rtol=0, atol=1e-12) if dtype == np.float64 else dict(rtol=1e-5, atol=5e-5)
    for name, f, r in zip(names, fast, reference):
        assert (f is None) == (r is None), name
        if r is not None:
            assert f.dtype == dtype and f.shape == r.shape, name
            np.testing.assert_allclose(f, r, err_msg=name, **tol)


def _layer_norm(impl, x, w, b, g, shape, monkeypatch, grads=(True, True, True)):
    monkeypatch.setattr(nn, "LAYER_NORM_IMPL", impl)
    ts = [None if a is None else Tensor(a, requires_grad=r, device="cpu") for a, r in zip((x, w, b), grads)]
    out = nn.layer_norm(ts[0], shape, ts[1], ts[2])
    out.backward(g)
    return [out.numpy()] + [None if t is None or t.grad is None else t.grad.numpy() for t in ts]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("shape, normalized, affine", [
    ((4, 7, 192), (192,), (True, True)),        # many blocks of rows (CHUNK is small here)
    ((3, 5, 4, 6), (4, 6), (True, True)),       # two normalised dims
    ((1000, 33), (33,), (True, False)),         # weight, no bias
    ((50, 9), (9,), (False, False)),            # no affine parameters
    ((9,), (9,), (False, True)),                # one row
])
@pytest.mark.parametrize("threads", [1, 2])
def test_layer_norm_rows_match_reference(dtype, shape, normalized, affine, threads, monkeypatch):
    monkeypatch.setattr(nn, "CHUNK", 512)
    monkeypatch.setattr(nn, "_SPLIT_MIN", 1)
    monkeypatch.setattr(nn, "ELEMENTWISE_THREADS", threads)
    rng = np.random.default_rng(6)
    x = (rng.standard_normal(shape) * 2 + 0.5).astype(dtype)
    w, b = ((rng.standard_normal(normalized).astype(dtype) if on else None) for on in affine)
    g = rng.standard_normal(shape).astype(dtype)
    fast = _layer_norm("auto", x, w, b, g, normalized, monkeypatch)
    # float32 against the float64 reference: dw and db sum 1000 float32 rows (the reference's float32
    # sums are further off than the blocks' partial sums)
    as64 = [None if a is None else a.astype(np.float64) for a in (x, w, b, g)]
    reference = _layer_norm("reference", *as64, normalized, monkeypatch)
    _assert_blocks_match(("out", "dx", "dw", "db"), fast, reference, dtype)


@pytest.mark.parametrize("grads", [(False, True, True), (True, False, True), (True, True, False)])
def test_layer_norm_rows_skip_unneeded_gradients(grads, monkeypatch):
    """Only the inputs that require grad get one, and those equal the reference's (float64, 1e-12)."""
    rng = np.random.default_rng(7)
    x, w, b, g = rng.standard_normal((6, 10)), rng.standard_normal(10), rng.standard_normal(10), \
        rng.standard_normal((6, 10))
    fast = _layer_norm("auto", x, w, b, g, (10,), monkeypatch, grads)
    reference = _layer_norm("reference", x, w, b, g, (10,), monkeypatch, grads)
    for f, r, need in zip(fast[1:], reference[1:], grads):
        assert (f is not None) == need == (r is not None)
        if need:
            np.testing.assert_allclose(f, r, rtol=0, atol=1e-12)


# --- batch_norm (batch statistics) by blocks of rows against _normalize over whole arrays ------------
def _batch_norm(impl, x, w, b, g, monkeypatch, grads=(True, True, True)):
    monkeypatch.setattr(nn, "BATCH_NORM_IMPL", impl)
    ts = [None if a is None else Tensor(a, requires_grad=r, device="cpu") for a, r in zip((x, w, b), grads)]
    running = [np.zeros(x.shape[1], x.dtype), np.ones(x.shape[1], x.dtype)]
    out = nn.batch_norm(ts[0], *running, ts[1], ts[2], training=True)
    out.backward(g)
    return [out.numpy()] + [None if t is None or t.grad is None else t.grad.numpy() for t in ts] + running


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("shape, affine", [
    ((4, 6, 9, 11), (True, True)),              # NCHW, rows of 99 (CHUNK is small: a few rows per block)
    ((3, 5, 40, 30), (True, False)),            # rows longer than CHUNK: one row per block
    ((8, 7, 13), (False, False)),               # (N, C, L)
    ((16, 5), (False, True)),                   # (N, C): rows of one value
])
@pytest.mark.parametrize("threads", [1, 2])
def test_batch_norm_rows_match_reference(dtype, shape, affine, threads, monkeypatch):
    """Output, gradients and the updated running statistics equal the reference's."""
    monkeypatch.setattr(nn, "CHUNK", 512)
    monkeypatch.setattr(nn, "_SPLIT_MIN", 1)
    monkeypatch.setattr(nn, "ELEMENTWISE_THREADS", threads)
    rng = np.random.default_rng(10)
    x = (rng.standard_normal(shape) * 3 + 2).astype(dtype)
    w, b = ((rng.standard_normal(shape[1]).astype(dtype) if on else None) for on in affine)
    g = rng.standard_normal(shape).astype(dtype)
    fast = _batch_norm("auto", x, w, b, g, monkeypatch)
    reference = _batch_norm("reference", *[None if a is None else a.astype(np.float64) for a in (x, w, b, g)],
                            monkeypatch)
    _assert_blocks_match(("out", "dx", "dw", "db", "running_mean", "running_var"), fast, reference, dtype)


@pytest.mark.parametrize("grads", [(False, True, True), (True, False, True), (True, True, False)])
def test_batch_norm_rows_skip_unneeded_gradients(grads, monkeypatch):
    rng = np.random.default_rng(11)
    x, w, b, g = rng.standard_normal((4, 3, 5)), rng.standard_normal(3), rng.standard_normal(3), \
        rng.standard_normal((4, 3, 5))
    fast = _batch_norm("auto", x, w, b, g, monkeypatch, grads)
    reference = _batch_norm("reference", x, w, b, g, monkeypatch, grads)
    for f, r, need in zip(fast[1:4], reference[1:4], grads):
        assert (f is not None) == need == (r is not None)
        if need:
            np.testing.assert_allclose(f, r, rtol=0, atol=1e-12)


# --- softmax by blocks of rows against the whole-array softmax --------------------------------------
def _softmax(impl, x, g, dim, monkeypatch):
    monkeypatch.setattr(nn, "SOFTMAX_IMPL", impl)
    t = Tensor(x, requires_grad=True, device="cpu")
    out = nn.softmax(t, dim)
    out.backward(g)
    return out.numpy(), t.grad.numpy()


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("shape, dim", [((2, 3, 40, 9, 9), -1), ((3, 50, 196), 2), ((7,), 0), ((4, 1), -1), ((5, 2), 1),
                                        ((6, 17), -1)])
@pytest.mark.parametrize("threads", [1, 2])
def test_softmax_rows_match_reference(dtype, shape, dim, threads, monkeypatch):
    monkeypatch.setattr(nn, "CHUNK", 1000)
    monkeypatch.setattr(nn, "_SPLIT_MIN", 1)
    monkeypatch.setattr(nn, "ELEMENTWISE_THREADS", threads)
    rng = np.random.default_rng(8)
    x = (rng.standard_normal(shape) * 4).astype(dtype)
    x.reshape(-1)[:3] = [80, -1e4, 1e4][:x.size]   # huge logits: the max shift keeps them finite
    g = rng.standard_normal(shape).astype(dtype)
    fast, reference = _softmax("auto", x, g, dim, monkeypatch), _softmax("reference", x, g, dim, monkeypatch)
    tol = dict(rtol=0, atol=1e-12) if dtype == np.float64 else dict(rtol=1e-5, atol=1e-6)
    for name, f, r in zip(("out", "dx"), fast, reference):
        assert f.dtype == dtype and f.shape == shape, name
        assert np.isfinite(f).all(), name
        np.testing.assert_allclose(f, r, err_msg=name, **tol)


@pytest.mark.parametrize("op", ["gelu", "layer_norm", "softmax", "batch_norm"])
def test_chunked_values_do_not_depend_on_the_thread_count(op, monkeypatch):
    """The blocks are fixed by CHUNK; threads only share them out: 1, 2 and 3 threads give the same bits."""
    monkeypatch.setattr(nn, "CHUNK", 1000)
    monkeypatch.setattr(nn, "_SPLIT_MIN", 1)
    rng = np.random.default_rng(9)
    x, w, b = (rng.standard_normal(s).astype(np.float32) for s in [(3, 70, 40), (40,), (40,)])
    g = rng.standard_normal(x.shape).astype(np.float32)
    results = []
    for threads in (1, 2, 3):
        monkeypatch.setattr(nn, "ELEMENTWISE_THREADS", threads)
        ts = [Tensor(a, requires_grad=True, device="cpu") for a in (x, w, b)]
        out = {"gelu": lambda: nn.gelu(ts[0]), "layer_norm": lambda: nn.layer_norm(ts[0], 40, ts[1], ts[2]),
               "softmax": lambda: nn.softmax(ts[0], -1),
               "batch_norm": lambda: nn.batch_norm(ts[0].permute(0, 2, 1), None, None, ts[1], ts[2], True).permute(0, 2, 1)}[op]()
        out.backward(g)
        results.append([out.numpy()] + [t.grad.numpy() for t in ts if t.grad is not None])
    for other in results[1:]:
        for r, o in zip(results[0], other):
            np.testing.assert_array_equal(o, r)


@pytest.mark.parametrize("text, expected", [("2048K", 2 << 20), ("1M", 1 << 20), ("512K\n", 512 << 10),
                                            ("393216", 393216), ("n/a", 1 << 19)])
def test_l2_cache_size_is_read_from_sysfs(text, expected, tmp_path):
    size = tmp_path / "size"
    size.write_text(text)
    assert nn._l2_cache_bytes(path=str(size)) == expected
    assert nn._l2_cache_bytes(path=str(tmp_path / "missing")) == 1 << 19


def test_chunk_fills_the_l2_cache_with_four_float32_buffers():
    l2 = nn._l2_cache_bytes()
    assert nn.CHUNK & (nn.CHUNK - 1) == 0 and 1 << 14 <= nn.CHUNK <= 1 << 18
    assert nn.CHUNK == min(1 << 18, max(1 << 14, 1 << (l2 // 16).bit_length() - 1))
    assert 16 * nn.CHUNK <= l2 or nn.CHUNK == 1 << 14


def test_split_runs_blas_on_one_thread_and_restores_it(monkeypatch):
    threadpoolctl = pytest.importorskip("threadpoolctl")
    monkeypatch.setattr(nn, "ELEMENTWISE_THREADS", 2)
    libraries = nn._blas_libraries()
    assert libraries, "threadpoolctl finds NumPy's BLAS"
    before = [lib.get_num_threads() for lib in libraries]
    with threadpoolctl.threadpool_limits(2, user_api="blas"):
        seen = []
        nn._split(lambda lo, hi: seen.append((lo, hi, [lib.get_num_threads() for lib in libraries])),
                  4, nn._SPLIT_MIN)
        assert sorted(s[:2] for s in seen) == [(0, 2), (2, 4)]
        assert all(counts == [1] * len(libraries) for *_, counts in seen)
        assert [lib.get_num_threads() for lib in libraries] == [2] * len(libraries)
    assert [lib.get_num_threads() for lib in libraries] == before


def test_import_sets_the_openblas_thread_timeout_unless_set():
    import subprocess
    import sys
    code = "import os, minivolo; print(os.environ['OPENBLAS_THREAD_TIMEOUT'])"
    env = {k: v for k, v in __import__("os").environ.items() if k != "OPENBLAS_THREAD_TIMEOUT"}
    assert subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          check=True).stdout.strip() == "20"
    env["OPENBLAS_THREAD_TIMEOUT"] = "25"
    assert subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          check=True).stdout.strip() == "25"
