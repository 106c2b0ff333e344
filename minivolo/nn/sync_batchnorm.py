"""SyncBatchNorm: batch normalisation over the global batch of a data-parallel run (as torch.nn.SyncBatchNorm)."""
from __future__ import annotations

from .. import distributed
from ..tensor import Tensor, concatenate
from .layers import BatchNorm2d
from .module import Module


class SyncBatchNorm(BatchNorm2d):
    """BatchNorm2d whose training statistics are those of the global batch, over all ranks.

    x (N, C, H, W) -> (N, C, H, W). Training with ``distributed.world_size() > 1``, per channel:

        M    = sum_r n_r                       (n_r = N H W of rank r)
        mean = sum_r sum_i x / M               one all-reduce of (sum x (C,), n_r)
        var  = sum_r sum_i (x - mean)^2 / M    one all-reduce of (C,)  (two passes, as F.batch_norm)
        y    = (x - mean) / sqrt(var + eps) * weight + bias

    The same formula as ``F.batch_norm``, written with Tensor ops around ``distributed.all_reduce_sum``
    (a differentiable all-reduce), so autograd derives the backward through the collectives: it
    all-reduces the two per-channel gradient sums (of dL/dvar and dL/dmean). A 2-rank step thus equals
    a 1-process step on the concatenated batch. Running statistics are updated as BatchNorm2d's, from
    the global mean and the unbiased global variance (factor M / (M - 1)). In eval mode, or with one
    process, this is exactly BatchNorm2d.
    """

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or distributed.world_size() == 1:
            return super().forward(x)
        if x.ndim != 4:
            raise ValueError(f"SyncBatchNorm: expected input (N, C, H, W), got shape {x.shape}")
        c, axes, shape = x.shape[1], (0, 2, 3), (1, x.shape[1], 1, 1)
        local = concatenate([x.sum(axis=axes), Tensor(x.xp.full((1,), x.size // c, dtype=x.dtype))])
        total = distributed.all_reduce_sum(local)                      # (C + 1,): sums and M
        count = total[c:]                                              # (1,)
        mean = (total[:c] / count).reshape(shape)
        xc = x - mean
        var = (distributed.all_reduce_sum((xc * xc).sum(axis=axes)) / count).reshape(shape)
        out = xc / (var + self.eps).sqrt()
        if self.weight is not None:
            out = out * self.weight.reshape(shape)
        if self.bias is not None:
            out = out + self.bias.reshape(shape)
        if self.track_running_stats:
            self._update_running_stats(mean.data.reshape(c), var.data.reshape(c), count.data)
        return out

    def _update_running_stats(self, mean, var, count) -> None:
        self.num_batches_tracked.data += 1
        factor = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked.item())
        for r, stat in ((self.running_mean, mean), (self.running_var, var * (count / (count - 1)))):
            r.data[...] = factor * stat.astype(r.dtype) + (1 - factor) * r.data

    @classmethod
    def convert_sync_batchnorm(cls, module: Module, process_group=None) -> Module:
        """Replace every BatchNorm2d in ``module`` by a SyncBatchNorm sharing its parameters and buffers
        (as torch); returns ``module``, or the new layer when ``module`` itself is a BatchNorm2d.
        ``process_group`` must be None: minivolo has one group, all ranks."""
        if process_group is not None:
            raise ValueError("convert_sync_batchnorm: process_group must be None (minivolo syncs all ranks)")
        if isinstance(module, BatchNorm2d) and not isinstance(module, cls):
            sync = cls(module.num_features, module.eps, module.momentum, module.affine,
                       module.track_running_stats, bias=module.bias is not None)
            sync.weight, sync.bias = module.weight, module.bias
            sync._buffers.update(module._buffers)
            sync.train(module.training)
            return sync
        for name, child in list(module._modules.items()):
            if child is not None:  # assigned in place: Sequential runs its children in this order
                module._modules[name] = cls.convert_sync_batchnorm(child)
        return module
