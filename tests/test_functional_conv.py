"""unfold, fold, conv2d, the pools, pad and interpolate against PyTorch (the oracle).

Values and every input gradient against ``torch.nn.functional``, in float64 and float32 over many argument
combinations, zero-size batches included. Finite differences, the adjoint identity, conv2d = unfold + matmul,
dtypes and errors need no torch: they are in test_conv_math.py.
"""
import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from oracle import check_against_torch, torch

import minivolo as mv
from minivolo import functional as F
from minivolo.functional import conv
from test_conv_math import DTYPES, EMPTY_BATCH, WINDOWS, blocks_shape, randn, unfold_args

TF = torch.nn.functional


# --- unfold / fold ---------------------------------------------------------------------------------
@pytest.mark.parametrize("case", WINDOWS)
def test_blocks_shape_is_torchs(case):
    """The no-torch tests compute fold's input shape by torch's formula: check it against torch."""
    assert blocks_shape(case) == tuple(TF.unfold(torch.zeros(case[0]), **unfold_args(case)).shape)


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
    cols = F.unfold(mv.Tensor(x), **args).numpy()
    np.testing.assert_array_equal(cols, TF.unfold(torch.from_numpy(x), **args).numpy())
    y = randn(*cols.shape, seed=2)
    folded = F.fold(mv.Tensor(y), (h, w), **args).numpy()
    np.testing.assert_allclose(folded, TF.fold(torch.from_numpy(y), (h, w), **args).numpy(), rtol=1e-12, atol=1e-12)
    assert abs((cols * y).sum() - (x * folded).sum()) <= 1e-12 * max(1.0, abs((cols * y).sum()))


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


def test_conv2d_skips_input_gradient(monkeypatch):
    """The image fed to the first layer needs no gradient: col2im must not run, dW must still be right."""
    x, w = randn(2, 3, 6, 6, seed=1), randn(4, 3, 3, 3, seed=2)
    weight = mv.Tensor(w, requires_grad=True)
    monkeypatch.setattr(conv, "_col2im", lambda *a, **k: pytest.fail("col2im ran for an input without grad"))
    F.conv2d(mv.Tensor(x), weight, padding=1).sum().backward()
    tw = torch.from_numpy(w).requires_grad_()
    TF.conv2d(torch.from_numpy(x), tw, padding=1).sum().backward()
    np.testing.assert_allclose(weight.grad.numpy(), tw.grad.numpy(), rtol=1e-12, atol=1e-12)


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


EMPTY_BATCH_TORCH = {  # torch's side of test_conv_math.EMPTY_BATCH
    "unfold": lambda x: TF.unfold(x, 3, padding=1, stride=2),
    "fold": lambda x: TF.fold(x, (5, 5), 3, padding=1, stride=2),
    "conv2d": lambda x: TF.conv2d(x, torch.from_numpy(randn(3, 2, 3, 3)), padding=1),
    "avg_pool2d": lambda x: TF.avg_pool2d(x, 2, ceil_mode=True),
    "max_pool2d": lambda x: TF.max_pool2d(x, 3, 2, 1),
    "pad": lambda x: TF.pad(x, (1, 1, 2, 0)),
    "pad reflect": lambda x: TF.pad(x, (1, 1, 2, 0), mode="reflect"),
    "interpolate": lambda x: TF.interpolate(x, size=(3, 4), mode="bilinear"),
}


@pytest.mark.parametrize("name", EMPTY_BATCH)
def test_empty_batch_like_torch(name):
    """A (0, C, H, W) batch: empty outputs of torch's shape, empty input gradients."""
    fn, shape, out_shape = EMPTY_BATCH[name]
    out, = check_against_torch(fn, EMPTY_BATCH_TORCH[name], [np.zeros(shape)])
    assert out.shape == out_shape
