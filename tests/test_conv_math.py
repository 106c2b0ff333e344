"""unfold, fold, conv2d, the pools, pad and interpolate against mathematics, without PyTorch.

Finite differences (``gradcheck``, float64) for every op; the identities that hold the im2col design
together: <unfold(x), y> = <x, fold(y)> (fold is unfold's adjoint, so each is the other's backward) and
conv2d = unfold followed by one matmul; zero-size batches; the dtypes; the errors. The comparisons with
``torch.nn.functional`` are in test_functional_conv.py.
"""
import itertools

import numpy as np
import pytest

import minivolo as mv
from minivolo import gradcheck
from minivolo import functional as F

DTYPES = [np.float64, np.float32]


def randn(*shape, dtype=np.float64, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def leaf(*shape, seed=0):
    """A float64 leaf for gradcheck."""
    return mv.Tensor(randn(*shape, seed=seed), requires_grad=True)

# --- unfold / fold ---------------------------------------------------------------------------------
# (input shape, kernel_size, dilation, padding, stride)
WINDOWS = [
    ((2, 3, 7, 7), 3, 1, 1, 2),                      # VOLO's outlooker: k3 p1 s2 on an odd size
    ((1, 2, 8, 6), 3, 1, 1, 1),                      # batch 1, overlapping windows
    ((2, 2, 9, 7), (3, 2), 1, 0, 1),                 # non-square kernel
    ((2, 3, 10, 9), 3, 2, 2, 1),                     # dilation
    ((1, 2, 9, 11), (2, 3), (2, 1), (1, 2), (2, 3)),  # everything non-square
    ((2, 2, 8, 8), 2, 1, 0, 2),                      # patchify: disjoint windows that tile the image
    ((2, 2, 7, 8), 2, 1, 0, 3),                      # stride past the kernel: gaps between windows
    ((1, 3, 5, 5), 1, 1, 0, 1),                      # 1x1: a free view
    ((2, 2, 6, 6), 4, 1, 0, 3),                      # partial overlap
    ((1, 2, 7, 5), 3, 1, 1, (1, 3)),
]


def unfold_args(case):
    _, k, d, p, s = case
    return dict(kernel_size=k, dilation=d, padding=p, stride=s)

def blocks_shape(case):
    """The shape of unfold's output for ``case`` (fold's input): (B, C*kh*kw, oh*ow), o as torch's formula."""
    (B, C, H, W), k, d, p, s = case
    (kh, kw), (dh, dw), (ph, pw), (sh, sw) = (v if isinstance(v, tuple) else (v, v) for v in (k, d, p, s))
    oh, ow = (H + 2 * ph - dh * (kh - 1) - 1) // sh + 1, (W + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    return B, C * kh * kw, oh * ow


@pytest.mark.parametrize("case", WINDOWS)
def test_unfold_fold_adjoint(case):
    """<unfold(x), y> == <x, fold(y)>: fold is unfold's transpose, hence its backward (and vice versa)."""
    args = unfold_args(case)
    x, y = randn(*case[0], seed=1), randn(*blocks_shape(case), seed=2)
    lhs = float((F.unfold(mv.Tensor(x), **args).numpy() * y).sum())
    rhs = float((x * F.fold(mv.Tensor(y), case[0][2:], **args).numpy()).sum())
    assert abs(lhs - rhs) <= 1e-12 * max(1.0, abs(lhs))


def test_unfold_fold_gradcheck():
    args = dict(kernel_size=(2, 3), dilation=1, padding=1, stride=(2, 1))
    gradcheck(lambda x: F.unfold(x, **args), leaf(1, 2, 5, 4))
    gradcheck(lambda y: F.fold(y, (5, 4), **args), leaf(1, 12, 12))


def test_unfold_channel_major_order():
    """Row c*kh*kw + i*kw + j of unfold holds channel c at kernel offset (i, j)."""
    x = np.arange(2 * 4 * 5, dtype=np.float64).reshape(1, 2, 4, 5)
    cols = F.unfold(mv.Tensor(x), (2, 3)).numpy().reshape(2, 2, 3, 3, 3)  # (C, kh, kw, oh, ow)
    for c, i, j in itertools.product(range(2), range(2), range(3)):
        np.testing.assert_array_equal(cols[c, i, j], x[0, c, i:i + 3, j:j + 3])


# --- conv2d, pools, pad, interpolate ----------------------------------------------------------------
def test_conv2d_gradcheck():
    kwargs = dict(stride=(1, 2), padding=1, dilation=(2, 1), groups=2)
    gradcheck(lambda x, w, b: F.conv2d(x, w, b, **kwargs), leaf(2, 2, 5, 4, seed=1), leaf(4, 1, 3, 2, seed=2),
              leaf(4, seed=3))


@pytest.mark.parametrize("groups", [1, 2])
def test_conv2d_is_unfold_then_matmul(groups):
    """conv2d(x, W) = W (O, C/G·k·k) @ unfold(x) (per group), reshaped to (B, O, oh, ow)."""
    x, weight, bias = randn(2, 4, 7, 6, seed=1), randn(6, 4 // groups, 3, 2, seed=2), randn(6, seed=3)
    kwargs = dict(stride=(2, 1), padding=(1, 0), dilation=(1, 2))
    out = F.conv2d(mv.Tensor(x), mv.Tensor(weight), mv.Tensor(bias), groups=groups, **kwargs).numpy()
    cols = F.unfold(mv.Tensor(x), (3, 2), **kwargs).numpy()                      # (B, C·3·2, L)
    cols = cols.reshape(2, groups, -1, cols.shape[-1])                          # (B, G, C/G·3·2, L)
    expected = weight.reshape(groups, 6 // groups, -1) @ cols                   # (B, G, O/G, L)
    expected = expected.reshape(2, 6, *out.shape[2:]) + bias[:, None, None]
    np.testing.assert_allclose(out, expected, rtol=1e-12, atol=1e-12)


def test_pool_gradcheck():
    gradcheck(lambda x: F.avg_pool2d(x, 3, 2, 1, ceil_mode=True, count_include_pad=False), leaf(1, 2, 6, 5))
    gradcheck(lambda x: F.avg_pool2d(x, 2, ceil_mode=True), leaf(1, 2, 5, 5))
    gradcheck(lambda x: F.max_pool2d(x, 3, 2, 1, ceil_mode=True), leaf(1, 2, 6, 5))
    gradcheck(lambda x: F.max_pool2d(x, (2, 3), 1, dilation=(2, 1)), leaf(1, 2, 5, 5))


def test_pad_gradcheck():
    gradcheck(lambda x: F.pad(x, (2, 1, 1, 2), mode="reflect"), leaf(1, 2, 4, 5))
    gradcheck(lambda x: F.pad(x, (1, -2, -1, 2), value=0.5), leaf(1, 2, 4, 5))
    gradcheck(lambda x: F.pad(x, (1, 2, 2, 0), mode="replicate"), leaf(1, 2, 4, 5))
    gradcheck(lambda x: F.pad(x, (2, 1, -1, 2), mode="circular"), leaf(1, 2, 4, 5))


def test_interpolate_gradcheck():
    gradcheck(lambda x: F.interpolate(x, size=(7, 3), mode="bicubic"), leaf(1, 2, 4, 5))
    gradcheck(lambda x: F.interpolate(x, scale_factor=1.5, mode="bilinear", align_corners=True), leaf(1, 2, 4, 5))
    gradcheck(lambda x: F.interpolate(x, size=(3, 8), mode="nearest"), leaf(1, 2, 4, 5))


# --- zero-size inputs --------------------------------------------------------------------------------
EMPTY_BATCH = {  # op, input shape with B = 0, output shape (as torch gives them)
    "unfold": (lambda x: F.unfold(x, 3, padding=1, stride=2), (0, 2, 5, 5), (0, 18, 9)),
    "fold": (lambda x: F.fold(x, (5, 5), 3, padding=1, stride=2), (0, 18, 9), (0, 2, 5, 5)),
    "conv2d": (lambda x: F.conv2d(x, mv.Tensor(randn(3, 2, 3, 3)), padding=1), (0, 2, 5, 5), (0, 3, 5, 5)),
    "avg_pool2d": (lambda x: F.avg_pool2d(x, 2, ceil_mode=True), (0, 2, 5, 5), (0, 2, 3, 3)),
    "max_pool2d": (lambda x: F.max_pool2d(x, 3, 2, 1), (0, 2, 5, 5), (0, 2, 3, 3)),
    "pad": (lambda x: F.pad(x, (1, 1, 2, 0)), (0, 2, 5, 5), (0, 2, 7, 7)),
    "pad reflect": (lambda x: F.pad(x, (1, 1, 2, 0), mode="reflect"), (0, 2, 5, 5), (0, 2, 7, 7)),
    "interpolate": (lambda x: F.interpolate(x, size=(3, 4), mode="bilinear"), (0, 2, 5, 5), (0, 2, 3, 4)),
}


@pytest.mark.parametrize("name", EMPTY_BATCH)
def test_empty_batch_gives_empty_outputs_and_gradients(name):
    fn, shape, out_shape = EMPTY_BATCH[name]
    x = mv.Tensor(np.zeros(shape), requires_grad=True)
    out = fn(x)
    assert out.shape == out_shape
    out.sum().backward()
    assert x.grad.shape == shape


@pytest.mark.parametrize("call, op", [
    (lambda: F.unfold(mv.Tensor(np.zeros((2, 0, 5, 5))), 3), "unfold"),
    (lambda: F.unfold(mv.Tensor(np.zeros((2, 3, 0, 5))), 1), "unfold"),
    (lambda: F.fold(mv.Tensor(np.zeros((1, 0, 9))), (5, 5), 3), "fold"),
    (lambda: F.conv2d(mv.Tensor(np.zeros((1, 0, 5, 5))), mv.Tensor(np.zeros((3, 0, 3, 3)))), "conv2d"),
    (lambda: F.max_pool2d(mv.Tensor(np.zeros((0, 5, 5))), 2), "max_pool2d"),
    (lambda: F.avg_pool2d(mv.Tensor(np.zeros((1, 2, 5, 0))), 1), "avg_pool2d"),
    (lambda: F.interpolate(mv.Tensor(np.zeros((1, 2, 0, 5))), size=3), "interpolate"),
])
def test_empty_dims_other_than_the_batch_are_refused(call, op):
    """torch refuses these too (and its conv2d returns a shape of its own for C = 0)."""
    with pytest.raises(ValueError, match=rf"{op}: only the batch dim may be empty \(size 0\), got input of shape"):
        call()


# --- dtypes ----------------------------------------------------------------------------------------
OPS = {
    "unfold": (lambda x: F.unfold(x, 3, padding=1, stride=2), (1, 2, 5, 5)),
    "fold": (lambda x: F.fold(x, (5, 5), 3, padding=1, stride=2), (1, 18, 9)),
    "conv2d": (lambda x: F.conv2d(x, mv.Tensor(randn(3, 2, 3, 3, dtype=np.float32), requires_grad=True),
                                  mv.Tensor(randn(3, dtype=np.float32), requires_grad=True), padding=1), (1, 2, 5, 5)),
    "avg_pool2d": (lambda x: F.avg_pool2d(x, 2, ceil_mode=True), (1, 2, 5, 5)),
    "max_pool2d": (lambda x: F.max_pool2d(x, 3, 2, 1), (1, 2, 5, 5)),
    "pad": (lambda x: F.pad(x, (1, 1, 2, 0), mode="reflect"), (1, 2, 5, 5)),
    "interpolate": (lambda x: F.interpolate(x, size=(8, 3), mode="bicubic"), (1, 2, 5, 5)),
}


@pytest.mark.parametrize("name", OPS)
def test_float32_stays_float32(name):
    fn, shape = OPS[name]
    x = mv.Tensor(randn(*shape, dtype=np.float32), requires_grad=True)
    out = fn(x)
    out.backward(np.ones(out.shape, np.float32))
    assert out.dtype == np.float32 and x.grad.dtype == np.float32


# --- bad arguments ---------------------------------------------------------------------------------
IMAGE = mv.Tensor(np.zeros((1, 2, 5, 5)))


@pytest.mark.parametrize("call, message", [
    (lambda: F.unfold(mv.Tensor(np.zeros((3, 4))), 2),
     r"unfold: input must be 4-D \(B, C, H, W\) or 3-D \(C, H, W\), got shape \(3, 4\)"),
    (lambda: F.unfold(IMAGE, 0), "unfold: kernel_size must be positive, got 0"),
    (lambda: F.unfold(IMAGE, (3,)), "unfold: kernel_size must be an int or a pair of ints"),
    (lambda: F.unfold(IMAGE, 2.5), "unfold: kernel_size must be an int or a pair of ints"),
    (lambda: F.unfold(IMAGE, 2, padding=-1), "unfold: padding must be non-negative"),
    (lambda: F.unfold(IMAGE, 2, stride=0), "unfold: stride must be positive"),
    (lambda: F.unfold(IMAGE, 2, dilation=(1, 0)), "unfold: dilation must be positive"),
    (lambda: F.unfold(IMAGE, 4, dilation=2), r"unfold: kernel_size 4 with dilation 2 spans 7 pixels, more than "
                                             r"the padded input's height 5 \+ 0 \+ 0 = 5"),
    (lambda: F.fold(mv.Tensor(np.zeros(18)), (5, 5), 3), r"fold: input must be 3-D .* or 2-D \(C\*kh\*kw, L\)"),
    (lambda: F.fold(mv.Tensor(np.zeros((1, 18, 8))), (5, 5), 3, padding=1, stride=2),
     r"fold: input has L = 8 blocks, but output_size \(5, 5\) .* yields 3\*3 = 9 blocks"),
    (lambda: F.fold(mv.Tensor(np.zeros((1, 10, 9))), (5, 5), 3), r"fold: input.shape\[1\] = 10 must be divisible "
                                                                  r"by the kernel_size product 3\*3 = 9"),
    (lambda: F.fold(mv.Tensor(np.zeros((1, 9, 9))), (0, 5), 3), "fold: output_size must be positive"),
    (lambda: F.conv2d(IMAGE, mv.Tensor(np.zeros((4, 3, 3, 3)))),
     r"conv2d: weight \(4, 3, 3, 3\) expects C/groups = 3 channels per group, so 3 input channels with "
     r"groups=1; input has 2"),
    (lambda: F.conv2d(IMAGE, mv.Tensor(np.zeros((3, 1, 3, 3))), groups=2), "conv2d: weight.shape\\[0\\] = 3 .* groups=2"),
    (lambda: F.conv2d(IMAGE, mv.Tensor(np.zeros((4, 2, 3)))), "conv2d: weight must be 4-D"),
    (lambda: F.conv2d(IMAGE, mv.Tensor(np.zeros((4, 2, 3, 3))), groups=0), "conv2d: groups must be a positive int"),
    (lambda: F.conv2d(IMAGE, mv.Tensor(np.zeros((4, 2, 3, 3))), mv.Tensor(np.zeros(3))),
     r"conv2d: bias must have shape \(4,\)"),
    (lambda: F.conv2d(IMAGE, mv.Tensor(np.zeros((4, 2, 3, 3), np.float32))), "conv2d: weight dtype float32"),
    (lambda: F.conv2d(IMAGE, mv.Tensor(np.zeros((4, 2, 3, 3))), padding="same", stride=2),
     "conv2d: padding='same' needs stride 1"),
    (lambda: F.conv2d(IMAGE, mv.Tensor(np.zeros((4, 2, 3, 3))), padding="full"),
     "conv2d: padding must be an int, a pair, 'valid' or 'same'"),
    (lambda: F.avg_pool2d(IMAGE, 3, padding=2), "avg_pool2d: padding must be at most half the"),
    (lambda: F.avg_pool2d(IMAGE, 2, divisor_override=0), "avg_pool2d: divisor_override must be a non-zero int"),
    (lambda: F.max_pool2d(IMAGE, 2, padding=2), "max_pool2d: padding must be at most half the"),
    (lambda: F.max_pool2d(mv.Tensor(np.zeros((5, 5))), 2), r"max_pool2d: input must be 4-D"),
    (lambda: F.pad(IMAGE, (1, 2, 3)), "pad: pad must be an even-length sequence"),
    (lambda: F.pad(IMAGE, (5, 0), mode="reflect"), r"pad: reflect padding must be smaller than the dim"),
    (lambda: F.pad(IMAGE, (1, 1), mode="wrap"), "pad: mode must be"),
    (lambda: F.pad(IMAGE, (1, 1), mode="reflect", value=2.0), "pad: mode 'reflect' takes no value"),
    (lambda: F.pad(IMAGE, (-3, -3)), r"pad: padding \(-3, -3\) of dim 3 \(size 5\) leaves size -1"),
    (lambda: F.interpolate(IMAGE, size=3, scale_factor=2), "interpolate: give exactly one of size and scale_factor"),
    (lambda: F.interpolate(IMAGE), "interpolate: give exactly one of size and scale_factor"),
    (lambda: F.interpolate(IMAGE, size=3, align_corners=True), "interpolate: align_corners can only be set"),
    (lambda: F.interpolate(IMAGE, size=3, mode="trilinear"), "interpolate: mode must be one of"),
    (lambda: F.interpolate(IMAGE, scale_factor=-1.0), "interpolate: scale_factor must be a positive"),
    (lambda: F.interpolate(IMAGE, size=(3, 0)), "interpolate: size must be positive"),
])
def test_bad_arguments(call, message):
    with pytest.raises(ValueError, match=message):
        call()
