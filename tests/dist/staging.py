"""The MPI path with device arrays, on fakecupy (tests/fakecupy, the strict CuPy stand-in, where an
implicit device<->host conversion raises): every collective copies to the host and back explicitly.
Under ``mpiexec -n 2``: the collectives, and a data-parallel step of volo_nano with SyncBatchNorm and
mix-token on "cuda", whose averaged gradients must equal the same step on the CPU. Exits non-zero on a
mismatch."""
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import fakecupy as cp  # noqa: E402

import minivolo  # noqa: E402
from minivolo import backend  # noqa: E402

backend.use_cupy(cp, cp.cupyx)

from minivolo import distributed as dist  # noqa: E402
from minivolo import functional as F  # noqa: E402
from minivolo import nn  # noqa: E402
from minivolo.models import create_model  # noqa: E402
from minivolo.tensor import Tensor  # noqa: E402

dist.init(device="cuda")
r, w = dist.rank(), dist.world_size()
assert dist.backend_name() == "mpi", dist.backend_name()  # fakecupy has no NCCL: host staging

a = cp.asarray(np.arange(6.0) * (r + 1))
total = dist.all_reduce(a)
assert isinstance(total, cp.ndarray)
np.testing.assert_array_equal(cp.asnumpy(total), np.arange(6.0) * (w * (w + 1) // 2))
np.testing.assert_array_equal(cp.asnumpy(dist.all_reduce(a, "mean")), np.arange(6.0) * (w + 1) / 2)
got = dist.broadcast(cp.asarray(np.full(3, float(r))), root=w - 1)
assert isinstance(got, cp.ndarray) and cp.asnumpy(got).tolist() == [w - 1.0] * 3
assert cp.asnumpy(dist.exchange(cp.asarray(np.array([r])), w - 1 - r)).tolist() == [w - 1 - r]

images = np.random.default_rng(5).standard_normal((4 * w, 3, 32, 32))
labels = np.random.default_rng(6).integers(0, 10, 4 * w)
grads = {}
for device in ("cpu", "cuda"):
    minivolo.manual_seed(r)  # different weights per rank: DDP broadcasts rank 0's
    model = create_model("volo_nano", use_mix_token=True).double().to(device)
    model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    ddp = dist.DistributedDataParallel(model, bucket_cap_mb=0.1)
    x = Tensor(images[r::w], device=device)
    cls, aux, bbox = model.forward_train(x, bbox=(1, 0, 3, 2))  # mix-token's flip crosses the ranks
    y = Tensor(backend.to_device(labels[r::w], device))
    loss = F.cross_entropy(cls, y) + F.cross_entropy(aux.mean(axis=1), y)
    loss.backward()
    ddp.reduce_gradients()
    grads[device] = {n: backend.to_numpy(p.grad.data) for n, p in model.named_parameters()}
    assert all(isinstance(p.grad.data, cp.ndarray) == (device == "cuda") for p in model.parameters())
for n, g in grads["cpu"].items():
    np.testing.assert_allclose(grads["cuda"][n], g, rtol=0, atol=1e-12, err_msg=n)
print(f"rank {r}/{w} staging ok")
