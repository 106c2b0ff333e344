"""Checks of minivolo.distributed's collectives under ``mpiexec -n N``; exits non-zero on a mismatch."""
import numpy as np

from minivolo import distributed as dist
from minivolo.tensor import Tensor

dist.init()
r, w = dist.rank(), dist.world_size()
assert dist.backend_name() == "mpi" and w > 1, (dist.backend_name(), w)
assert dist.is_main() == (r == 0)

a = np.arange(6, dtype=np.float64).reshape(2, 3) * (r + 1)
total = sum(range(1, w + 1))
np.testing.assert_array_equal(dist.all_reduce(a), np.arange(6).reshape(2, 3) * total)
np.testing.assert_array_equal(dist.all_reduce(a, "mean"), np.arange(6).reshape(2, 3) * total / w)
assert dist.all_reduce(np.array([r], np.int64)).dtype == np.int64
np.testing.assert_array_equal(dist.all_reduce(np.array([r + 1]), "mean"), [total / w])
np.testing.assert_array_equal(a, np.arange(6).reshape(2, 3) * (r + 1))  # the input is left alone

np.testing.assert_array_equal(dist.broadcast(np.full(3, float(r)), root=w - 1), np.full(3, w - 1.0))
np.testing.assert_array_equal(dist.exchange(np.array([r]), w - 1 - r), [w - 1 - r])

# flip_batch: the flip of the global batch, of which rank r holds rows r::w
B = 2 * w
glob = np.arange(B * 3, dtype=np.float64).reshape(B, 3)
x = Tensor(glob[r::w], requires_grad=True)
y = dist.flip_batch(x)
np.testing.assert_array_equal(y.data, glob[::-1][r::w])
weights = np.random.default_rng(0).standard_normal((B, 3))
(y * Tensor(weights[r::w])).sum().backward()  # d/dx of sum(flip(X) * W) is W flipped back
np.testing.assert_array_equal(x.grad.data, weights[::-1][r::w])

assert dist.broadcast_object({"name": f"run-{r}", "n": [r]}, root=1) == {"name": "run-1", "n": [1]}
dist.barrier()
print(f"rank {r}/{w} ok")
