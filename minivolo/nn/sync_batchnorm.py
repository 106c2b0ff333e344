"""SyncBatchNorm: batch normalisation over the global batch of a data-parallel run (as torch.nn.SyncBatchNorm)."""
from __future__ import annotations

from .. import distributed
from .layers import BatchNorm2d
from .module import Module


class SyncBatchNorm(BatchNorm2d):
    """BatchNorm2d whose training statistics are those of the global batch, over all processes.

    x (N, C, H, W) -> (N, C, H, W). Training with ``distributed.world_size() > 1``, per channel, with
    M = sum_r n_r values over the processes r:

        mean = sum_r sum_i x / M,   var = sum_r sum_i (x - mean)^2 / M,
        y = (x - mean) / sqrt(var + eps) * weight + bias,

    ``F.batch_norm``'s fused op with its means taken over all processes (``all_reduce=``): the sums
    of each process are all-reduced, in the forward (the count, the mean, the variance) and in the
    backward (the means of gh and gh * xhat, in one call). A 2-process step thus equals a 1-process step
    on the concatenated batch. The running statistics take the global mean and unbiased variance.
    In eval mode, or with one process, this is exactly BatchNorm2d.
    """

    def _all_reduce(self):
        return distributed.all_reduce if self.training and distributed.world_size() > 1 else None

    @classmethod
    def convert_sync_batchnorm(cls, module: Module, process_group=None) -> Module:
        """Replace every BatchNorm2d in ``module`` by a SyncBatchNorm sharing its parameters and buffers
        (as torch); returns ``module``, or the new layer when ``module`` itself is a BatchNorm2d.
        ``process_group`` must be None: minivolo has one group, all processes."""
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
