"""Every teaching notebook runs top to bottom without an error.

The notebooks assert real numbers (gradients against finite differences, unfold/fold against conv2d,
step-by-step outlook attention against the module), so a broken library fails them here.

The kernel must run the interpreter that runs pytest (the one with minivolo's dependencies). A
``python3`` kernelspec in the user's Jupyter folder could point anywhere, so the tests write their own
``python3`` kernelspec, whose argv starts with ``sys.executable``, into a temporary folder and put that
folder first on JUPYTER_PATH.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

NEEDS = "running the notebooks needs nbformat, nbclient and ipykernel: pip install 'minivolo[test]'"
nbformat = pytest.importorskip("nbformat", reason=NEEDS)
nbclient = pytest.importorskip("nbclient", reason=NEEDS)
pytest.importorskip("ipykernel", reason=NEEDS)

NOTEBOOKS_DIR = Path(__file__).resolve().parent.parent / "notebooks"
NOTEBOOKS = sorted(NOTEBOOKS_DIR.glob("*.ipynb"))


@pytest.fixture(scope="module")
def this_interpreter_kernel(tmp_path_factory):
    """A ``python3`` kernelspec that launches ``sys.executable``, first on JUPYTER_PATH."""
    root = tmp_path_factory.mktemp("jupyter")
    spec_dir = root / "kernels" / "python3"
    spec_dir.mkdir(parents=True)
    spec = {"argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            "display_name": "Python 3 (pytest's interpreter)", "language": "python"}
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    old = os.environ.get("JUPYTER_PATH")
    os.environ["JUPYTER_PATH"] = os.pathsep.join([str(root)] + ([old] if old else []))
    yield "python3"
    if old is None:
        del os.environ["JUPYTER_PATH"]
    else:
        os.environ["JUPYTER_PATH"] = old


def test_kernelspec_is_this_interpreter(this_interpreter_kernel):
    from jupyter_client.kernelspec import KernelSpecManager

    argv = KernelSpecManager().get_kernel_spec(this_interpreter_kernel).argv
    assert argv[0] == sys.executable, f"kernel would run {argv[0]}, pytest runs {sys.executable}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs(path: Path, this_interpreter_kernel):
    nb = nbformat.read(path, as_version=4)
    stored = [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and c.get("outputs")]
    assert not stored, f"{path.name}: cells {stored} have stored outputs; clear them before committing"
    client = nbclient.NotebookClient(nb, timeout=300, kernel_name=this_interpreter_kernel,
                                     resources={"metadata": {"path": str(NOTEBOOKS_DIR)}})
    client.execute()  # raises CellExecutionError, with the cell and its traceback, on any error


def test_all_five_notebooks_present():
    names = [p.name for p in NOTEBOOKS]
    expected = ["01_autograd.ipynb", "02_unfold_fold.ipynb", "03_outlook_attention.ipynb",
                "04_volo_model.ipynb", "05_training.ipynb"]
    assert names == expected, f"expected notebooks {expected}, found {names}"
