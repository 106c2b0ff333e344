"""The course notebooks: every solution passes its checkers, every student notebook runs with its checkers
saying "not implemented", a planted mistake is caught, and each committed notebook shows a figure.

The notebooks are found, not listed: every ``notebooks/solutions/NN_name.ipynb`` is a solution, and its
student notebook is ``notebooks/NN_name.ipynb`` (made from it by ``notebooks/build.py``, whose functions
these tests use). A ``notebooks/*.ipynb`` without a solution (a notebook not yet turned into exercises)
is a plain notebook: it only has to run from top to bottom.

How a verdict is read. A checker of ``minivolo.exercises`` prints one line per verdict,
``<mark> <name>: <text>``, with the mark ✓ for "passed", … for "not implemented", ✗ for "wrong" or
"error". A test reads the outputs of each checker cell (the cells tagged "check": their printed text, and
the plain-text form of any displayed value) and takes every line that starts with a mark, a space, a name
and a colon as a verdict. A checker cell without a verdict fails every test, and so does any cell that
raises (nbclient stops on it). Then:
    solution:         every verdict of every checker cell is ✓
    student notebook: every verdict of every checker cell is …
    planted mistake:  the exercise's "wrong" source replaces its solution, the notebook runs up to that
                      exercise's checker cell, and that cell reports at least one ✗ (and no ✓)

The notebooks run in a kernel of the interpreter that runs pytest, with this checkout's root first on
PYTHONPATH (so the minivolo they test is this one) and notebooks/ as their working directory. They
run on the CPU only: the whole module is skipped when MINIVOLO_DEVICE=cuda (the fake-GPU pass of the
suite), where notebook 09 demonstrates the CuPy stand-in by itself.
"""
from __future__ import annotations

import importlib.util
import os
import re
import sys
from pathlib import Path

import pytest

NEEDS = "running the notebooks needs nbformat, nbclient and ipykernel: pip install 'minivolo[test]'"
nbformat = pytest.importorskip("nbformat", reason=NEEDS)
pytest.importorskip("nbclient", reason=NEEDS)
pytest.importorskip("ipykernel", reason=NEEDS)

if os.environ.get("MINIVOLO_DEVICE", "cpu") not in ("", "cpu"):
    pytest.skip("the notebooks are tested in the CPU pass only (MINIVOLO_DEVICE="
                f"{os.environ['MINIVOLO_DEVICE']}); notebook 09 shows the GPU stand-in itself",
                allow_module_level=True)

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS_DIR = ROOT / "notebooks"
_spec = importlib.util.spec_from_file_location("minivolo_notebooks_build", NOTEBOOKS_DIR / "build.py")
build = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(build)

SOLUTIONS = sorted(build.SOLUTIONS.glob("*.ipynb"))
PLAIN = [p for p in sorted(NOTEBOOKS_DIR.glob("*.ipynb")) if not (build.SOLUTIONS / p.name).exists()]
STUDENTS = [NOTEBOOKS_DIR / p.name for p in SOLUTIONS]
WRONGS = [(p, (build.exercise(c) or {}).get("exercise"))
          for p in SOLUTIONS for c in nbformat.read(p, as_version=4).cells
          if (build.exercise(c) or {}).get("wrong")]

VERDICT = re.compile(r"^([✓…✗]) (\S+): ", re.MULTILINE)
MARKS = {"passed": "✓", "not implemented": "…", "wrong or error": "✗"}


def _ids(paths):
    return [p.name for p in paths]


@pytest.fixture(scope="module")
def kernel():
    """build.py's kernel (this interpreter), with this checkout first on the kernel's PYTHONPATH."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PYTHONPATH", str(ROOT), prepend=os.pathsep)
        with build.this_interpreter_kernel() as name:
            yield name


def verdicts(cell) -> list[tuple[str, str]]:
    """(mark, name) of every verdict a checker cell printed or displayed."""
    text = ""
    for out in cell.get("outputs", []):
        if out.output_type == "stream":
            text += out.text
        elif "text/plain" in out.get("data", {}):
            text += out.data["text/plain"] + "\n"
    return VERDICT.findall(text)


def check_cells(nb) -> list[tuple[int, list]]:
    return [(i, verdicts(c)) for i, c in enumerate(nb.cells) if build.is_check(c)]


def assert_all(nb, status: str, where: str) -> None:
    cells = check_cells(nb)
    assert cells, f"{where}: no checker cell"
    mark = MARKS[status]
    for i, found in cells:
        assert found, f"{where}: the checker cell {i} printed no verdict"
        bad = [f"{m} {n}" for m, n in found if m != mark]
        assert not bad, f"{where}: the checker cell {i} reported {bad}, expected every verdict {status!r} ({mark})"


def test_kernel_is_this_interpreter(kernel):
    from jupyter_client.kernelspec import KernelSpecManager

    argv = KernelSpecManager().get_kernel_spec(kernel).argv
    assert argv[0] == sys.executable, f"kernel would run {argv[0]}, pytest runs {sys.executable}"


def test_there_are_solutions():
    assert SOLUTIONS, f"no solution notebooks in {build.SOLUTIONS}"


@pytest.mark.parametrize("path", SOLUTIONS, ids=_ids(SOLUTIONS))
def test_solution_follows_the_contract(path):
    """>= 3 exercises, each with a stub that raises NotImplementedError and a checker cell right after,
    names unique, at least one planted mistake."""
    assert build.problems(nbformat.read(path, as_version=4), path.name) == []


@pytest.mark.parametrize("path", SOLUTIONS, ids=_ids(SOLUTIONS))
def test_student_notebook_matches_its_solution(path):
    """What ``build.py --check`` checks: the student notebook is its solution with the stubs in."""
    student = NOTEBOOKS_DIR / path.name
    assert student.exists(), f"no student notebook {student.name}: run python notebooks/build.py {path.stem}"
    diff = build.mismatch(nbformat.read(path, as_version=4), nbformat.read(student, as_version=4))
    assert diff is None, f"{student.name} is out of date ({diff}): run python notebooks/build.py {path.stem}"


def test_build_check_command(capsys):
    """``python notebooks/build.py --check``: exit status 0 and the count, nothing executed."""
    assert build.main(["--check"]) == 0, capsys.readouterr().out
    assert f"{len(SOLUTIONS)} student notebooks match their solutions" in capsys.readouterr().out


def test_student_notebook_holds_no_solution():
    solution = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(
        "def f():\n    return 1", metadata={"tags": ["exercise"], "minivolo": {
            "exercise": "f", "stub": "def f():\n    raise NotImplementedError", "wrong": "def f():\n    return 2"}})])
    student = build.student_from_solution(solution)
    assert student.cells[0].source == "def f():\n    raise NotImplementedError"
    assert student.cells[0].metadata == {"tags": ["exercise"], "minivolo": {"exercise": "f"}}
    assert build.mismatch(solution, student) is None
    student.cells[0].source = "def f():\n    return 1"
    assert "cell 0: its source" in build.mismatch(solution, student)


def test_verdict_reading():
    """The rule above, on the lines minivolo.exercises prints."""
    from minivolo.exercises import check_value

    cell = nbformat.v4.new_code_cell("", metadata={"tags": ["check"]})
    lines = [check_value(v, 3, name=n, verbose=False).message for v, n in ((3, "a"), (None, "b"), (4, "c"))]
    cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text="\n".join(lines) + "\n")]
    assert verdicts(cell) == [("✓", "a"), ("…", "b"), ("✗", "c")]


@pytest.mark.parametrize("path", SOLUTIONS + STUDENTS, ids=[f"solutions/{p.name}" for p in SOLUTIONS] + _ids(STUDENTS))
def test_committed_notebook_holds_a_figure(path):
    assert path.exists(), f"{path} is missing: run python notebooks/build.py {path.stem}"
    nb = nbformat.read(path, as_version=4)
    images = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if "image/png" in o.get("data", {})]
    assert images, f"{path.name} holds no stored figure: run python notebooks/build.py {path.stem}"


@pytest.mark.parametrize("path", SOLUTIONS, ids=_ids(SOLUTIONS))
def test_solution_passes_every_checker(path, kernel):
    nb = build.execute(build.without_outputs(nbformat.read(path, as_version=4)))
    assert_all(nb, "passed", f"solutions/{path.name}")


@pytest.mark.parametrize("path", SOLUTIONS, ids=_ids(SOLUTIONS))
def test_student_notebook_runs_and_reports_not_implemented(path, kernel):
    student = build.student_from_solution(nbformat.read(path, as_version=4))
    nb = build.execute(student)
    assert_all(nb, "not implemented", path.name)


@pytest.mark.parametrize("path,name", WRONGS, ids=[f"{p.stem}-{n}" for p, n in WRONGS])
def test_planted_mistake_is_caught(path, name, kernel):
    nb, check_at = build.with_wrong(nbformat.read(path, as_version=4), name)
    build.execute(nb)
    found = verdicts(nb.cells[check_at])
    assert found, f"{path.name}: the checker of {name!r} printed no verdict"
    assert {m for m, _ in found} == {"✗"}, f"{path.name}: the planted mistake in {name!r} got {found}, expected ✗"


@pytest.mark.parametrize("path", PLAIN, ids=_ids(PLAIN))
def test_plain_notebook_runs(path, kernel):
    """A notebook without a solution yet runs top to bottom (nbclient raises on any error)."""
    build.execute(build.without_outputs(nbformat.read(path, as_version=4)))
