import os
import sys

# One BLAS/OpenMP thread per test process: pytest-xdist already runs one process per core, and the
# spin-waiting thread pools of OpenBLAS and torch starve each other when oversubscribed (a 20x slowdown
# measured on 2 cores). Set before NumPy and torch load their thread pools.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402
import pytest

sys.path.insert(0, os.path.dirname(__file__))


@pytest.fixture(autouse=True)
def _seed():
    """Every test starts from the same random state."""
    import minivolo
    minivolo.manual_seed(0)
    np.random.seed(0)
