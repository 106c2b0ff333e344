"""Run at the start of every Python process whose PYTHONPATH holds this folder: `pytest --fake-gpu` puts it
there (with MINIVOLO_FAKE_GPU=1), so that the processes the tests start (the CLI, notebook kernels) run
minivolo's "cuda" device on fakecupy too."""
import os
import sys

if os.environ.get("MINIVOLO_FAKE_GPU") == "1":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))  # tests/
    import fakecupy
    from minivolo import backend

    backend.use_cupy(fakecupy, fakecupy.cupyx)
