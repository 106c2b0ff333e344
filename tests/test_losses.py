"""minivolo.losses against a NumPy transcription of sail-sg/volo's TokenLabelCrossEntropy (no torch)."""
import numpy as np
import pytest

from minivolo.models import create_model
from minivolo import Tensor, gradcheck
from minivolo.losses import TokenLabelCrossEntropy, soft_target_cross_entropy

B, N, C = 4, 6, 5
BOXES = [(0, 0, 0, 0), (1, 0, 3, 2), (0, 0, 2, 3)]  # no mixing, then boxes of 4 and 6 tokens


def _log_softmax(x):
    s = x - x.max(axis=-1, keepdims=True)
    return s - np.log(np.exp(s).sum(axis=-1, keepdims=True))


def _soft_ce(x, t):
    return np.mean(np.sum(-t * _log_softmax(x), axis=-1))


def sail_sg_token_label_ce(output, target, dense_weight=0.5, cls_weight=1.0):
    """sail-sg/volo loss/cross_entropy.py TokenLabelCrossEntropy.forward, line by line in NumPy
    (torch's ``repeat(1, N)`` is ``np.tile``, ``transpose(1, 2)`` swaps axes 1 and 2, ``flip(0)`` is [::-1])."""
    cls_out, aux_out, (bbx1, bby1, bbx2, bby2) = output
    b, n, c = aux_out.shape
    if target.ndim == 2:
        target_cls = target
        target_aux = np.tile(target, (1, n)).reshape(b * n, c)
    else:
        target_cls = target[:, :, 1]
        target_aux = target[:, :, 2:]
        target_aux = np.swapaxes(target_aux, 1, 2).reshape(-1, c)
    lam = 1 - ((bbx2 - bbx1) * (bby2 - bby1) / n)
    if lam < 1:
        target_cls = lam * target_cls + (1 - lam) * target_cls[::-1]
    aux_out = aux_out.reshape(-1, c)
    return cls_weight * _soft_ce(cls_out, target_cls) + dense_weight * _soft_ce(aux_out, target_aux)


def _distributions(rng, shape, axis):
    p = np.exp(2 * rng.standard_normal(shape))
    return p / p.sum(axis=axis, keepdims=True)


def _inputs(seed=0, kind="soft"):
    rng = np.random.default_rng(seed)
    cls_logits = 3 * rng.standard_normal((B, C))
    aux_logits = 3 * rng.standard_normal((B, N, C))
    if kind == "soft":
        target = _distributions(rng, (B, C), axis=1)
    else:
        target = _distributions(rng, (B, C, 2 + N), axis=1)  # every column a distribution over C
    return cls_logits, aux_logits, target


@pytest.mark.parametrize("kind", ["soft", "dense"])
@pytest.mark.parametrize("bbox", BOXES)
@pytest.mark.parametrize("weights", [(0.5, 1.0), (1.0, 0.3)])
def test_equals_sail_sg_transcription(kind, bbox, weights):
    cls_logits, aux_logits, target = _inputs(1, kind)
    loss = TokenLabelCrossEntropy(*weights)((Tensor(cls_logits), Tensor(aux_logits), bbox), target)
    expected = sail_sg_token_label_ce((cls_logits, aux_logits, bbox), target, *weights)
    assert loss.dtype == np.float64 and loss.shape == ()
    np.testing.assert_allclose(loss.item(), expected, rtol=1e-13)


def test_box_changes_only_the_class_term():
    """Sanity of the transcription itself: with dense_weight alone the box plays no role; with
    cls_weight alone a box mixes the class target with the flipped batch (a different value)."""
    cls_logits, aux_logits, target = _inputs(2, "dense")
    args = lambda box: ((Tensor(cls_logits), Tensor(aux_logits), box), target)  # noqa: E731
    dense_only = TokenLabelCrossEntropy(dense_weight=1.0, cls_weight=0.0)
    assert dense_only(*args((0, 0, 0, 0))).item() == dense_only(*args((1, 0, 3, 2))).item()
    cls_only = TokenLabelCrossEntropy(dense_weight=0.0, cls_weight=1.0)
    lam = 1 - 4 / N
    mixed = lam * target[:, :, 1] + (1 - lam) * target[::-1, :, 1]
    np.testing.assert_allclose(cls_only(*args((1, 0, 3, 2))).item(), _soft_ce(cls_logits, mixed), rtol=1e-13)


@pytest.mark.parametrize("bbox", BOXES[:2])
def test_integer_labels_with_label_smoothing(bbox):
    cls_logits, aux_logits, _ = _inputs(3)
    labels = np.array([0, 4, 2, 2])
    eps = 0.1
    soft = np.full((B, C), eps / C)
    soft[np.arange(B), labels] += 1 - eps
    loss = TokenLabelCrossEntropy(label_smoothing=eps)((Tensor(cls_logits), Tensor(aux_logits), bbox), labels)
    np.testing.assert_allclose(loss.item(), sail_sg_token_label_ce((cls_logits, aux_logits, bbox), soft),
                               rtol=1e-13)


def test_soft_target_cross_entropy_is_mean_of_rows():
    rng = np.random.default_rng(4)
    x, t = rng.standard_normal((7, C)), _distributions(rng, (7, C), axis=1)
    np.testing.assert_allclose(soft_target_cross_entropy(Tensor(x), Tensor(t)).item(), _soft_ce(x, t), rtol=1e-13)


@pytest.mark.parametrize("kind", ["soft", "dense"])
def test_gradcheck(kind):
    cls_logits, aux_logits, target = _inputs(5, kind)
    loss = TokenLabelCrossEntropy(dense_weight=0.7, cls_weight=1.3)
    inputs = (Tensor(cls_logits, requires_grad=True), Tensor(aux_logits, requires_grad=True),
              Tensor(target, requires_grad=True))
    assert gradcheck(lambda c, a, t: loss((c, a, (1, 0, 3, 2)), t), *inputs)


def test_gradient_of_the_logits_is_softmax_minus_target():
    """d loss / d cls_logits = cls_weight (softmax(x) - t) / B for distributions t (no box)."""
    cls_logits, aux_logits, target = _inputs(6, "soft")
    c = Tensor(cls_logits, requires_grad=True)
    TokenLabelCrossEntropy(cls_weight=2.0)((c, Tensor(aux_logits), (0, 0, 0, 0)), target).backward()
    p = np.exp(_log_softmax(cls_logits))
    np.testing.assert_allclose(c.grad.numpy(), 2.0 * (p - target) / B, rtol=1e-12, atol=1e-15)


def test_float32_logits_keep_float32():
    cls_logits, aux_logits, target = _inputs(7, "dense")
    loss = TokenLabelCrossEntropy()((Tensor(cls_logits.astype(np.float32)), Tensor(aux_logits.astype(np.float32)),
                                     (0, 0, 1, 1)), target)  # a float64 target array
    assert loss.dtype == np.float32
    np.testing.assert_allclose(loss.item(), sail_sg_token_label_ce((cls_logits, aux_logits, (0, 0, 1, 1)), target),
                               rtol=1e-5)


def test_with_volo_forward_train():
    """The loss takes forward_train's output as it comes (mix-token on): N = the pooled token grid."""
    model = create_model("volo_nano", use_mix_token=True, num_classes=3)
    x = Tensor(np.random.default_rng(8).standard_normal((2, 3, 32, 32)).astype(np.float32))
    cls_logits, aux_logits, bbox = out = model.forward_train(x, bbox=(0, 1, 2, 3))
    assert aux_logits.shape == (2, 16, 3)
    loss = TokenLabelCrossEntropy(label_smoothing=0.1)(out, np.array([0, 2]))
    loss.backward()
    assert model.head.weight.grad is not None and model.aux_head.weight.grad is not None
    c, a = cls_logits.numpy().astype(np.float64), aux_logits.numpy().astype(np.float64)
    soft = np.full((2, 3), 0.1 / 3)
    soft[[0, 1], [0, 2]] += 0.9
    np.testing.assert_allclose(loss.item(), sail_sg_token_label_ce((c, a, bbox), soft), rtol=1e-5)


@pytest.mark.parametrize("output, target, match", [
    (lambda c, a: (c, a), np.zeros((B, C)), "output must be"),
    (lambda c, a: (c.reshape(-1), a, (0, 0, 0, 0)), np.zeros((B, C)), "cls_logits must be"),
    (lambda c, a: (c, a[:, :, :2], (0, 0, 0, 0)), np.zeros((B, C)), r"aux_logits must be a Tensor \(4, N, 5\)"),
    (lambda c, a: (c, a, (0, 0, 0)), np.zeros((B, C)), "bbox must be"),
    (lambda c, a: (c, a, (0, 0, 0, 0)), np.zeros((B, C + 1)), r"soft target must be \(4, 5\) or \(4, 5, 8\)"),
    (lambda c, a: (c, a, (0, 0, 0, 0)), np.zeros((B, C, N)), r"soft target must be"),
    (lambda c, a: (c, a, (0, 0, 0, 0)), np.array([0, 1, 2, 5]), r"labels must be in \[0, 5\)"),
    (lambda c, a: (c, a, (0, 0, 0, 0)), np.zeros((B, 1), np.int64), r"class labels of shape \(4,\)"),
])
def test_errors_name_the_argument(output, target, match):
    cls_logits, aux_logits, _ = _inputs(9)
    with pytest.raises(ValueError, match=match):
        TokenLabelCrossEntropy()(output(Tensor(cls_logits), Tensor(aux_logits)), target)


@pytest.mark.parametrize("kwargs, match", [(dict(dense_weight=-1), "dense_weight"),
                                           (dict(dense_weight=0, cls_weight=0), "positive sum"),
                                           (dict(label_smoothing=1.0), "label_smoothing")])
def test_bad_constructor_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TokenLabelCrossEntropy(**kwargs)
