"""unfold, fold, conv2d, the pools, pad and interpolate: finite differences, PyTorch, and the adjoint identity.

Every op is checked three ways: ``gradcheck`` in float64 on small shapes; against ``torch.nn.functional``
(values and every input gradient) in float64 and float32 over many argument combinations; and, for the
unfold/fold pair, the identity <unfold(x), y> = <x, fold(y)> that makes each one the other's backward.
"""
import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from oracle import check_against_torch, torch

import minivolo as mv
from minivolo import gradcheck
from minivolo import functional as F
from minivolo.functional import conv

TF = torch.nn.functional
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
    """The shape of unfold's output for ``case`` (fold's input), from torch."""
    shape = case[0]
    return tuple(TF.unfold(torch.zeros(shape, dtype=torch.float64), **unfold_args(case)).shape)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", WINDOWS)
def test_unfold_matches_torch(case, dtype):
    args = unfold_args(case)
    check_against_torch(lambda x: F.unfold(x, **args), lambda x: TF.unfold(x, **args), [randn(*case[0], dtype=dtype)])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", WINDOWS)
def test_fold_matches_torch(case, dtype):
    args, size = unfold_args(case), case[0][2:]
    check_against_torch(lambda y: F.fold(y, size, **args), lambda y: TF.fold(y, size, **args),
                        [randn(*blocks_shape(case), dtype=dtype)])


@pytest.mark.parametrize("case", WINDOWS)
def test_unfold_fold_adjoint(case):
    """<unfold(x), y> == <x, fold(y)>: fold is unfold's transpose, hence its backward (and vice versa)."""
    args = unfold_args(case)
    x, y = randn(*case[0], seed=1), randn(*blocks_shape(case), seed=2)
    lhs = float((F.unfold(mv.Tensor(x), **args).data * y).sum())
    rhs = float((x * F.fold(mv.Tensor(y), case[0][2:], **args).data).sum())
    assert abs(lhs - rhs) <= 1e-12 * max(1.0, abs(lhs))


@settings(max_examples=30, deadline=None)
@given(b=st.integers(1, 2), c=st.integers(1, 3), h=st.integers(1, 9), w=st.integers(1, 9),
       kh=st.integers(1, 4), kw=st.integers(1, 4), dh=st.integers(1, 3), dw=st.integers(1, 3),
       ph=st.integers(0, 2), pw=st.integers(0, 2), sh=st.integers(1, 3), sw=st.integers(1, 3))
def test_unfold_fold_property(b, c, h, w, kh, kw, dh, dw, ph, pw, sh, sw):
    """Any geometry torch accepts: unfold equals torch's, and fold is its exact adjoint."""
    args = dict(kernel_size=(kh, kw), dilation=(dh, dw), padding=(ph, pw), stride=(sh, sw))
    if h + 2 * ph < dh * (kh - 1) + 1 or w + 2 * pw < dw * (kw - 1) + 1:
        with pytest.raises(ValueError, match="kernel_size"):
            F.unfold(mv.Tensor(randn(b, c, h, w)), **args)
        return
    x = randn(b, c, h, w, seed=1)
    cols = F.unfold(mv.Tensor(x), **args).data
    np.testing.assert_array_equal(cols, TF.unfold(torch.from_numpy(x), **args).numpy())
    y = randn(*cols.shape, seed=2)
    folded = F.fold(mv.Tensor(y), (h, w), **args).data
    np.testing.assert_allclose(folded, TF.fold(torch.from_numpy(y), (h, w), **args).numpy(), rtol=1e-12, atol=1e-12)
    assert abs((cols * y).sum() - (x * folded).sum()) <= 1e-12 * max(1.0, abs((cols * y).sum()))


def test_unfold_fold_gradcheck():
    args = dict(kernel_size=(2, 3), dilation=1, padding=1, stride=(2, 1))
    gradcheck(lambda x: F.unfold(x, **args), leaf(1, 2, 5, 4))
    gradcheck(lambda y: F.fold(y, (5, 4), **args), leaf(1, 12, 12))


def test_unfold_channel_major_order():
    """Row c*kh*kw + i*kw + j of unfold holds channel c at kernel offset (i, j)."""
    x = np.arange(2 * 4 * 5, dtype=np.float64).reshape(1, 2, 4, 5)
    cols = F.unfold(mv.Tensor(x), (2, 3)).data.reshape(2, 2, 3, 3, 3)  # (C, kh, kw, oh, ow)
    for c, i, j in itertools.product(range(2), range(2), range(3)):
        np.testing.assert_array_equal(cols[c, i, j], x[0, c, i:i + 3, j:j + 3])


# --- conv2d ----------------------------------------------------------------------------------------
# (input shape, weight shape, with bias, keyword arguments)
CONVS = [
    ((2, 4, 8, 8), (6, 4, 3, 3), True, {}),
    ((2, 4, 9, 9), (6, 4, 3, 3), True, dict(stride=2, padding=1)),              # k3 s2 on an odd size
    ((1, 3, 11, 9), (4, 3, 7, 7), False, dict(stride=2, padding=3)),            # VOLO's stem conv, batch 1
    ((2, 4, 8, 10), (6, 4, 2, 3), True, dict(stride=(2, 1), padding=(1, 0), dilation=(1, 2))),
    ((2, 4, 8, 8), (6, 2, 3, 3), True, dict(padding=1, groups=2)),
    ((2, 4, 7, 7), (4, 1, 3, 3), True, dict(padding=1, groups=4)),              # depthwise
    ((2, 4, 7, 6), (8, 1, 3, 3), False, dict(stride=2, padding=1, groups=4)),   # depthwise, multiplier 2
    ((2, 3, 8, 8), (5, 3, 4, 4), True, dict(stride=4)),                         # patchify (VOLO's proj)
    ((2, 3, 9, 9), (5, 3, 2, 2), True, dict(stride=2)),                         # downsample, odd size
    ((1, 4, 5, 6), (3, 4, 1, 1), True, {}),                                     # 1x1
    ((2, 3, 6, 7), (4, 3, 3, 2), True, dict(padding="same", dilation=2)),
    ((2, 3, 6, 7), (4, 3, 4, 4), False, dict(padding="same")),                  # even kernel: extra pad right
    ((2, 3, 6, 7), (4, 3, 3, 3), True, dict(padding="valid")),
]


@pytest.mark.filterwarnings("ignore:Using padding='same'")  # torch's note on its own padded copy
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CONVS)
def test_conv2d_matches_torch(case, dtype):
    xshape, wshape, with_bias, kwargs = case
    arrays = [randn(*xshape, dtype=dtype, seed=1), randn(*wshape, dtype=dtype, seed=2)]
    if with_bias:
        arrays.append(randn(wshape[0], dtype=dtype, seed=3))
    check_against_torch(lambda *a: F.conv2d(*a, **kwargs), lambda *a: TF.conv2d(*a, **kwargs), arrays)


def test_conv2d_gradcheck():
    kwargs = dict(stride=(1, 2), padding=1, dilation=(2, 1), groups=2)
    gradcheck(lambda x, w, b: F.conv2d(x, w, b, **kwargs), leaf(2, 2, 5, 4, seed=1), leaf(4, 1, 3, 2, seed=2),
              leaf(4, seed=3))


def test_conv2d_skips_input_gradient(monkeypatch):
    """The image fed to the first layer needs no gradient: col2im must not run, dW must still be right."""
    x, w = randn(2, 3, 6, 6, seed=1), randn(4, 3, 3, 3, seed=2)
    weight = mv.Tensor(w, requires_grad=True)
    monkeypatch.setattr(conv, "_col2im", lambda *a, **k: pytest.fail("col2im ran for an input without grad"))
    F.conv2d(mv.Tensor(x), weight, padding=1).sum().backward()
    tw = torch.from_numpy(w).requires_grad_()
    TF.conv2d(torch.from_numpy(x), tw, padding=1).sum().backward()
    np.testing.assert_allclose(weight.grad.data, tw.grad.numpy(), rtol=1e-12, atol=1e-12)


# --- pooling ---------------------------------------------------------------------------------------
AVG_POOLS = [
    dict(kernel_size=k, stride=s, padding=p, ceil_mode=c, count_include_pad=i)
    for k, s, p, c, i in itertools.product([2, 3, (3, 2)], [None, 2, (2, 1)], [0, 1], [False, True], [True, False])
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("size", [(7, 7), (6, 5)])
@pytest.mark.parametrize("kwargs", AVG_POOLS, ids=str)
def test_avg_pool2d_matches_torch(kwargs, size, dtype):
    check_against_torch(lambda x: F.avg_pool2d(x, **kwargs), lambda x: TF.avg_pool2d(x, **kwargs),
                        [randn(2, 3, *size, dtype=dtype)])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kwargs", [
    dict(kernel_size=2, stride=2, ceil_mode=True),               # VOLO's AvgPool2d(2, 2, ceil_mode=True)
    dict(kernel_size=3, stride=2, padding=1, ceil_mode=True, divisor_override=5),
    dict(kernel_size=(2, 3), stride=(3, 2), padding=(1, 1), ceil_mode=True, count_include_pad=False),
    dict(kernel_size=4, stride=3, padding=2, ceil_mode=True),
], ids=str)
def test_avg_pool2d_ceil_mode_odd_sizes(kwargs, dtype):
    for size in [(7, 7), (1, 1), (2, 3), (5, 8)]:
        try:
            TF.avg_pool2d(torch.zeros(1, 1, *size), **kwargs)
        except RuntimeError:  # torch finds no window position: so must we
            with pytest.raises(ValueError, match="kernel_size"):
                F.avg_pool2d(mv.Tensor(np.zeros((1, 1, *size))), **kwargs)
            continue
        check_against_torch(lambda x: F.avg_pool2d(x, **kwargs), lambda x: TF.avg_pool2d(x, **kwargs),
                            [randn(1, 2, *size, dtype=dtype)])


MAX_POOLS = [
    dict(kernel_size=k, stride=s, padding=p, dilation=d, ceil_mode=c)
    for k, s, p, d, c in itertools.product([2, 3, (3, 2)], [None, 1, 2], [0, 1], [1, 2], [False, True])
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kwargs", MAX_POOLS, ids=str)
def test_max_pool2d_matches_torch(kwargs, dtype):
    for size in [(7, 7), (6, 5)]:
        check_against_torch(lambda x: F.max_pool2d(x, **kwargs), lambda x: TF.max_pool2d(x, **kwargs),
                            [randn(2, 2, *size, dtype=dtype)])


@pytest.mark.parametrize("kwargs", [dict(kernel_size=3, stride=1, padding=1), dict(kernel_size=2, ceil_mode=True)],
                         ids=str)
def test_max_pool2d_ties_go_to_the_first_maximum(kwargs):
    """With ties in every window the gradient goes where torch sends it: the first maximum in window order."""
    x = np.random.default_rng(0).integers(0, 3, (2, 2, 7, 7)).astype(np.float64)
    check_against_torch(lambda t: F.max_pool2d(t, **kwargs), lambda t: TF.max_pool2d(t, **kwargs), [x])


def test_max_pool2d_nan_wins():
    """A NaN is the maximum of every window it is in (as torch), and receives those windows' gradient."""
    x = randn(1, 2, 6, 6)
    x[0, 1, 2, 3] = np.nan
    check_against_torch(lambda t: F.max_pool2d(t, 3, 2, 1), lambda t: TF.max_pool2d(t, 3, 2, 1), [x])


def test_pool_gradcheck():
    gradcheck(lambda x: F.avg_pool2d(x, 3, 2, 1, ceil_mode=True, count_include_pad=False), leaf(1, 2, 6, 5))
    gradcheck(lambda x: F.avg_pool2d(x, 2, ceil_mode=True), leaf(1, 2, 5, 5))
    gradcheck(lambda x: F.max_pool2d(x, 3, 2, 1, ceil_mode=True), leaf(1, 2, 6, 5))
    gradcheck(lambda x: F.max_pool2d(x, (2, 3), 1, dilation=(2, 1)), leaf(1, 2, 5, 5))


# --- pad -------------------------------------------------------------------------------------------
# (input shape, mode, pad, value)
PADS = [
    ((2, 3, 5, 4), "constant", (1, 2), 0.0),
    ((2, 3, 5, 4), "constant", (1, 2, 3, 0), 1.5),
    ((2, 3, 5, 4), "constant", (-1, 2, 0, -2), 0.0),           # negative amounts crop
    ((2, 3, 5, 4), "constant", (2, 2, 1, 1, 1, 0), -3.0),      # three dims, one of them the channel dim
    ((2, 3, 5), "constant", (-2, -1), 0.0),
    ((2, 3, 5, 4), "reflect", (1, 2, 2, 1), None),
    ((2, 3, 5), "reflect", (3, 0), None),
    ((2, 3, 5, 4), "replicate", (1, 3, 2, 0), None),
    ((2, 3, 5, 4), "circular", (2, 1, 1, 3), None),
    ((1, 2, 3, 5, 4), "replicate", (1, 0, 2, 1, 1, 2), None),  # three dims of a 5-D input
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape, mode, amounts, value", PADS, ids=str)
def test_pad_matches_torch(shape, mode, amounts, value, dtype):
    kwargs = dict(mode=mode) if value is None else dict(mode=mode, value=value)
    check_against_torch(lambda x: F.pad(x, amounts, **kwargs), lambda x: TF.pad(x, amounts, **kwargs),
                        [randn(*shape, dtype=dtype)])


def test_pad_gradcheck():
    gradcheck(lambda x: F.pad(x, (2, 1, 1, 2), mode="reflect"), leaf(1, 2, 4, 5))
    gradcheck(lambda x: F.pad(x, (1, -2, -1, 2), value=0.5), leaf(1, 2, 4, 5))


# --- interpolate -----------------------------------------------------------------------------------
# (input H, W, keyword arguments besides mode/align_corners)
RESIZES = [
    ((14, 14), dict(size=(24, 24))),          # VOLO's position embedding, 224 -> 384 fine-tuning
    ((24, 24), dict(size=14)),                # and back down
    ((7, 4), dict(size=(5, 9))),
    ((5, 6), dict(size=1)),
    ((5, 6), dict(scale_factor=2)),
    ((5, 6), dict(scale_factor=1.5)),
    ((6, 5), dict(scale_factor=(0.5, 1.7))),
    ((6, 5), dict(scale_factor=1.7, recompute_scale_factor=True)),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode, align_corners", [("bilinear", False), ("bilinear", True), ("bicubic", False),
                                                 ("bicubic", True), ("nearest", None), ("nearest-exact", None)])
@pytest.mark.parametrize("size, kwargs", RESIZES, ids=str)
def test_interpolate_matches_torch(size, kwargs, mode, align_corners, dtype):
    kwargs = dict(kwargs, mode=mode, align_corners=align_corners)
    check_against_torch(lambda x: F.interpolate(x, **kwargs), lambda x: TF.interpolate(x, **kwargs),
                        [randn(2, 3, *size, dtype=dtype)])


def test_interpolate_gradcheck():
    gradcheck(lambda x: F.interpolate(x, size=(7, 3), mode="bicubic"), leaf(1, 2, 4, 5))
    gradcheck(lambda x: F.interpolate(x, scale_factor=1.5, mode="bilinear", align_corners=True), leaf(1, 2, 4, 5))
    gradcheck(lambda x: F.interpolate(x, size=(3, 8), mode="nearest"), leaf(1, 2, 4, 5))


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


# --- regressions: behaviour that once differed from PyTorch ------------------------------------------
UNBATCHED = [
    ("conv2d", lambda x, w: F.conv2d(x, w, None, 2, 1, 1, 2), lambda x, w: TF.conv2d(x, w, None, 2, 1, 1, 2),
     [(4, 6, 5), (6, 2, 3, 3)]),
    ("avg_pool2d", lambda x: F.avg_pool2d(x, 2, 2, 1, True, False), lambda x: TF.avg_pool2d(x, 2, 2, 1, True, False),
     [(2, 5, 5)]),
    ("max_pool2d", lambda x: F.max_pool2d(x, 3, 2, 1), lambda x: TF.max_pool2d(x, 3, 2, 1), [(2, 5, 6)]),
    ("unfold", lambda x: F.unfold(x, (2, 3), 1, (1, 0), (1, 2)), lambda x: TF.unfold(x, (2, 3), 1, (1, 0), (1, 2)),
     [(2, 5, 6)]),
    ("fold", lambda x: F.fold(x, (4, 5), 2), lambda x: TF.fold(x, (4, 5), 2), [(8, 12)]),
]


@pytest.mark.parametrize("name,f,tf,shapes", UNBATCHED, ids=[u[0] for u in UNBATCHED])
def test_unbatched_input_like_torch(name, f, tf, shapes):
    """One sample without the batch dim: (C, H, W), or (C*kh*kw, L) for fold, as torch accepts."""
    check_against_torch(f, tf, [randn(*s, seed=i) for i, s in enumerate(shapes)])


@pytest.mark.parametrize("amounts", [(-1, 2), (2, -1), (-2, 1, 1, -3), (-1, -1, 2, 0), (2, -2)])
def test_circular_pad_with_negative_amounts_wraps_the_cropped_input(amounts):
    """torch crops first and then wraps around what is left, not around the whole input."""
    shape = (2, 3, 4, 5)[:2 + len(amounts) // 2]  # torch pads the dims after (N, C)
    check_against_torch(lambda x: F.pad(x, amounts, mode="circular"),
                        lambda x: TF.pad(x, amounts, mode="circular"), [randn(*shape)])
    with pytest.raises(ValueError, match="circular padding must be at most the dim"):
        F.pad(mv.Tensor(randn(1, 1, 5)), (2, -4), mode="circular")
