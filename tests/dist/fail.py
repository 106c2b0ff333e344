"""Rank 1 raises while rank 0 waits in a collective: every rank must stop (tests/test_distributed_mpi.py)."""
import numpy as np

from minivolo import distributed as dist

dist.init()
if dist.rank() == 1:
    raise ValueError("rank 1 fails on purpose")
dist.all_reduce(np.ones(3))
print("rank 0 should never get here")
