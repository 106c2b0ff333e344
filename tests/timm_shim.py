"""Import timm (the reference implementation) in a test environment that has torch but not torchvision.

timm is installed with ``--no-deps``; at import time it only needs a few names from torchvision. The
stand-ins for them are minivolo.bench's (``bench._import_timm``), which the benchmarks use for the same
reason; the test is skipped when torch or timm is missing.
"""
from __future__ import annotations

import importlib.util

import pytest

from minivolo import bench


def import_timm():
    """timm, importable with or without torchvision (skips the test when torch or timm is absent)."""
    pytest.importorskip("torch")
    if importlib.util.find_spec("timm") is None:
        pytest.skip("timm is not installed")
    timm = bench._import_timm()
    if isinstance(timm, str):
        pytest.fail(timm)
    import timm
    return timm
