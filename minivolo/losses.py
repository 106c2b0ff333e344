"""Losses of the VOLO training recipe: soft-target cross-entropy and token labeling.

    soft_target_cross_entropy(x, target)   mean_b sum_c -t_bc log softmax(x_b)_c
    TokenLabelCrossEntropy(...)            cls_weight · SoftCE(class token) + dense_weight · SoftCE(every token)

Token labeling (LV-ViT, arXiv 2104.10858) trains every output token of the aux head against a dense
target (a teacher's score map resampled to the token grid, see ``minivolo.token_labels``) besides the
usual class-token target. ``TokenLabelCrossEntropy`` computes exactly what sail-sg/volo's loss of the
same name computes (``loss/cross_entropy.py``); it is composed of Tensor ops, so autograd supplies the
gradient.
"""
from __future__ import annotations

from . import functional as F
from .nn import Module
from .tensor import Tensor

__all__ = ["soft_target_cross_entropy", "TokenLabelCrossEntropy"]


def soft_target_cross_entropy(input: Tensor, target: Tensor) -> Tensor:
    """``mean over rows of sum_c -t_c log softmax(x)_c``.  input (M, C) logits, target (M, C) -> scalar.

    The target rows are class distributions (soft labels); composed of log_softmax, mul, sum and mean,
    so the gradient, ``(softmax(x) sum_c t_c - t) / M`` for the input, comes from autograd.
    """
    return (-(target * F.log_softmax(input, dim=-1))).sum(axis=-1).mean()


class TokenLabelCrossEntropy(Module):
    """The token-labeling loss of VOLO (sail-sg/volo ``TokenLabelCrossEntropy``), for ``forward_train``.

    ``loss((cls_logits, aux_logits, bbox), target)`` with
      cls_logits (B, C)      the class-token logits,
      aux_logits (B, N, C)   the aux head on the N tokens (mix-token already undone by the model),
      bbox = (bbx1, bby1, bbx2, bby2)   the mix-token box on the token grid ((0, 0, 0, 0): no mixing),
      target, one of
        (B,)          integer class labels: t = (1 - label_smoothing) onehot + label_smoothing / C, then as (B, C);
        (B, C)        soft labels: the class target, and the target of every token of that image;
        (B, C, 2+N)   [ground truth, class target, N token targets] (``token_labels.dense_targets``);
                      the ground truth column is not used (VOLO's loss has no ground-truth blend).
    Then, with lam = 1 - (bbx2 - bbx1)(bby2 - bby1) / N the share of tokens that kept their image,
        t_cls = lam · t_cls + (1 - lam) · t_cls.flip(0)          (only when lam < 1)
        loss  = cls_weight · SoftCE(cls_logits, t_cls)
                + dense_weight · SoftCE(aux_logits as (B·N, C), token targets as (B·N, C))
    where SoftCE is ``soft_target_cross_entropy`` (a mean over its rows). The token targets are not
    mixed: the model has put the pasted tokens' outputs back with their own images.

    label_smoothing applies to integer labels only; soft and dense targets are taken as given
    (``token_labels.dense_targets`` smooths them already). A target array is cast to the logits'
    dtype and moved to their device; a target Tensor keeps its graph (a gradient reaches it).
    """

    def __init__(self, dense_weight: float = 0.5, cls_weight: float = 1.0, label_smoothing: float = 0.0):
        super().__init__()
        if dense_weight < 0 or cls_weight < 0 or dense_weight + cls_weight <= 0:
            raise ValueError(f"TokenLabelCrossEntropy: dense_weight and cls_weight must be >= 0 with a "
                             f"positive sum, got dense_weight={dense_weight}, cls_weight={cls_weight}")
        if not 0 <= label_smoothing < 1:
            raise ValueError(f"TokenLabelCrossEntropy: label_smoothing must be in [0, 1), got {label_smoothing}")
        self.dense_weight, self.cls_weight = float(dense_weight), float(cls_weight)
        self.label_smoothing = float(label_smoothing)

    def extra_repr(self) -> str:
        return (f"dense_weight={self.dense_weight}, cls_weight={self.cls_weight}, "
                f"label_smoothing={self.label_smoothing}")

    def forward(self, output, target) -> Tensor:
        cls_logits, aux_logits, bbox = _unpack_output(output)
        B, N, C = aux_logits.shape
        target = self._target(target, cls_logits)
        if target.shape not in ((B, C), (B, C, 2 + N)):
            raise ValueError(f"TokenLabelCrossEntropy: soft target must be ({B}, {C}) or ({B}, {C}, {2 + N}) "
                             f"(B, C of cls_logits, 2 + N tokens of aux_logits), got {target.shape}")
        if target.ndim == 2:  # one soft label per image, taken by all its tokens
            t_cls = target
            t_aux = target.reshape(B, 1, C)  # broadcast over the N tokens
        else:
            t_cls = target[:, :, 1]
            t_aux = target[:, :, 2:].permute(0, 2, 1)  # (B, C, N) -> (B, N, C), token order of aux_logits
        bbx1, bby1, bbx2, bby2 = bbox
        lam = 1 - (bbx2 - bbx1) * (bby2 - bby1) / N
        if lam < 1:
            t_cls = lam * t_cls + (1 - lam) * t_cls[::-1]
        loss_cls = soft_target_cross_entropy(cls_logits, t_cls)
        # mean over all B·N tokens of each token's cross-entropy
        loss_aux = (-(t_aux * F.log_softmax(aux_logits, dim=-1))).sum(axis=-1).mean()
        return self.cls_weight * loss_cls + self.dense_weight * loss_aux

    def _target(self, target, cls_logits: Tensor) -> Tensor:
        """target as a float Tensor (B, C) or (B, C, 2+N) in the logits' dtype and device."""
        B, C = cls_logits.shape
        if not isinstance(target, Tensor):
            target = Tensor(target, device=cls_logits.device)
        if target.dtype.kind in "iub":
            if target.shape != (B,):
                raise ValueError(f"TokenLabelCrossEntropy: integer target must be class labels of shape ({B},), "
                                 f"got {target.shape}")
            labels = target.data
            if bool(((labels < 0) | (labels >= C)).any()):
                raise ValueError(f"TokenLabelCrossEntropy: target labels must be in [0, {C}) (C of cls_logits)")
            xp, eps = cls_logits.xp, self.label_smoothing
            onehot = (labels[:, None] == xp.arange(C)).astype(cls_logits.dtype)
            return Tensor(onehot * (1 - eps) + eps / C)
        if target.dtype.kind != "f":
            raise ValueError(f"TokenLabelCrossEntropy: target must be integer labels or float soft labels, "
                             f"got dtype {target.dtype}")
        return target if target.dtype == cls_logits.dtype else target.astype(cls_logits.dtype)


def _unpack_output(output) -> tuple:
    """Check ``(cls_logits (B, C), aux_logits (B, N, C), bbox)`` and return it with bbox as 4 ints."""
    if not isinstance(output, (tuple, list)) or len(output) != 3:
        raise ValueError("TokenLabelCrossEntropy: output must be (cls_logits, aux_logits, bbox) as returned by "
                         f"VOLO.forward_train in training mode, got {type(output).__name__}")
    cls_logits, aux_logits, bbox = output
    if not isinstance(cls_logits, Tensor) or cls_logits.ndim != 2:
        raise ValueError(f"TokenLabelCrossEntropy: cls_logits must be a Tensor (B, C), got "
                         f"{getattr(cls_logits, 'shape', type(cls_logits).__name__)}")
    B, C = cls_logits.shape
    if not isinstance(aux_logits, Tensor) or aux_logits.ndim != 3 or aux_logits.shape[::2] != (B, C):
        raise ValueError(f"TokenLabelCrossEntropy: aux_logits must be a Tensor ({B}, N, {C}) (B and C of "
                         f"cls_logits), got {getattr(aux_logits, 'shape', type(aux_logits).__name__)}")
    if len(bbox) != 4:
        raise ValueError(f"TokenLabelCrossEntropy: bbox must be (bbx1, bby1, bbx2, bby2), got {bbox!r}")
    return cls_logits, aux_logits, tuple(int(b) for b in bbox)
