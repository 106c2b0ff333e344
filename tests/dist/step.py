"""Data-parallel training steps for tests/test_distributed_mpi.py, in float64 on volo_nano.

    python tests/dist/step.py OUT.npz [--steps 5] [--drop-path 0.2] [--mix-token (with TokenLabelCrossEntropy)] ...
alone is the 1-process reference on the global batch; under ``mpiexec -n 2`` every rank takes its
rows r::2 of the same global batch, wraps the model in DistributedDataParallel (starting from
*different* weights on each rank, so that the broadcast of rank 0's is tested too) and writes
OUT.rank<r>.npz: the gradients after the first backward ("grad/<name>") and the final state_dict
("state/<name>").
"""
import argparse
import sys

import numpy as np

import minivolo
from minivolo import distributed as dist
from minivolo import functional as F
from minivolo import nn
from minivolo.losses import TokenLabelCrossEntropy
from minivolo.models import create_model
from minivolo.optim import AdamW
from minivolo.tensor import Tensor


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--steps", type=int, default=1)
    parser.add_argument("--batch", type=int, default=8, help="global batch size")
    parser.add_argument("--drop-path", type=float, default=0.0)
    parser.add_argument("--mix-token", action="store_true")
    parser.add_argument("--no-sync-bn", dest="sync_bn", action="store_false")
    parser.add_argument("--bucket-cap-mb", type=float, default=0.1)
    args = parser.parse_args(argv)

    dist.init()
    r, w = dist.rank(), dist.world_size()
    minivolo.manual_seed(r)  # different initial weights per rank: DDP must broadcast rank 0's
    model = create_model("volo_nano", drop_path_rate=args.drop_path, use_mix_token=args.mix_token).double()
    if args.sync_bn:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    ddp = dist.DistributedDataParallel(model, bucket_cap_mb=args.bucket_cap_mb)
    optimizer = AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)

    data = np.random.default_rng(123)
    images = data.standard_normal((args.steps, args.batch, 3, 32, 32))
    labels = data.integers(0, 10, (args.steps, args.batch))
    grads = {}
    for step in range(args.steps):
        minivolo.manual_seed(1000 + step)  # one generator state on every rank: same masks and boxes
        x, y = Tensor(images[step][r::w]), labels[step][r::w]
        if args.mix_token:  # VOLO's token-labeling loss: the class targets mixed with the global flip's
            loss = TokenLabelCrossEntropy(label_smoothing=0.1)(model.forward_train(x), y)
        else:
            loss = F.cross_entropy(ddp(x), Tensor(y))
        optimizer.zero_grad()
        loss.backward()
        ddp.reduce_gradients()
        if step == 0:
            grads = {f"grad/{n}": p.grad.numpy() for n, p in model.named_parameters()}
        optimizer.step()
    state = {f"state/{n}": a for n, a in model.state_dict().items()}
    np.savez(args.out if w == 1 else f"{args.out}.rank{r}.npz", **grads, **state)


if __name__ == "__main__":
    sys.exit(main())
