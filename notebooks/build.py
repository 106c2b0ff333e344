"""Build the course's student notebooks from their solutions, and execute both with their outputs.

    python notebooks/build.py [NN_name ...]          build (all when none is named): student from solution,
                                                     execute both, save both with outputs and figures
    python notebooks/build.py --check [NN_name ...]  only check that each student notebook is its solution
                                                     with the stubs in (nothing executed, nothing written)

The source of truth is the SOLUTION notebook ``notebooks/solutions/NN_name.ipynb``. An exercise is a code
cell whose source is the solution, with the metadata

    {"tags": ["exercise"],
     "minivolo": {"exercise": "<name>", "stub": "<the student's cell>", "wrong": "<a planted mistake>"}}

("stub" required, its function bodies raise NotImplementedError; "wrong" on at least one exercise per
notebook), and the next code cell, tagged "check", calls a checker of ``minivolo.exercises``. The student
notebook ``notebooks/NN_name.ipynb`` is the same notebook with each exercise's source replaced by its stub
and its "minivolo" metadata reduced to the exercise's name (no solution, no planted mistake in it).

Both run with the interpreter that runs this script as their kernel and ``notebooks/`` as their working
directory; minivolo must be importable (installed, or ``PYTHONPATH`` set to the repository root: the kernel
inherits the environment). tests/test_notebooks.py uses the functions below.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import nbformat

NOTEBOOKS = Path(__file__).resolve().parent
SOLUTIONS = NOTEBOOKS / "solutions"
KERNEL = "minivolo-build"   # a kernelspec written on the fly, whose argv starts with sys.executable
MIN_EXERCISES = 3


# --- the two versions of a notebook -----------------------------------------------------------------------
def exercise(cell) -> dict | None:
    """The "minivolo" metadata of an exercise cell (name, stub, wrong), None for any other cell."""
    if cell.cell_type != "code" or "exercise" not in cell.metadata.get("tags", []):
        return None
    return cell.metadata.get("minivolo", {})


def is_check(cell) -> bool:
    return cell.cell_type == "code" and "check" in cell.metadata.get("tags", [])


def problems(solution, name: str = "solution") -> list[str]:
    """What breaks the contract in a solution notebook (empty when it is sound)."""
    found, exercises, wrongs = [], [], 0
    cells = solution.cells
    for i, cell in enumerate(cells):
        meta = exercise(cell)
        if meta is None:
            continue
        what = f"{name}: cell {i} (exercise {meta.get('exercise')!r})"
        if not meta.get("exercise"):
            found.append(f"{what} has no metadata minivolo.exercise (its name)")
        if "NotImplementedError" not in meta.get("stub", ""):
            found.append(f"{what} has no metadata minivolo.stub that raises NotImplementedError")
        wrongs += bool(meta.get("wrong"))
        following = [c for c in cells[i + 1:] if c.cell_type == "code"]
        if not following or not is_check(following[0]):
            found.append(f"{what} is not followed by a code cell tagged 'check'")
        exercises.append(meta.get("exercise"))
    if len(exercises) < MIN_EXERCISES:
        found.append(f"{name}: {len(exercises)} exercises, expected at least {MIN_EXERCISES}")
    if len(set(exercises)) != len(exercises):
        found.append(f"{name}: exercise names repeat: {exercises}")
    if exercises and not wrongs:
        found.append(f"{name}: no exercise has a planted mistake (metadata minivolo.wrong)")
    return found


def without_outputs(nb):
    """A copy of ``nb`` without outputs and execution counts."""
    nb = copy.deepcopy(nb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
        cell.metadata.pop("execution", None)
    return nb


def student_from_solution(solution):
    """The student notebook (without outputs): every exercise's source replaced by its stub, its metadata
    reduced to the tags and the exercise's name; every other cell as it is."""
    student = without_outputs(solution)
    for cell in student.cells:
        meta = exercise(cell)
        if meta is not None:
            cell.source = meta["stub"]
            cell.metadata["minivolo"] = {"exercise": meta["exercise"]}
    return student


def with_wrong(solution, name: str):
    """The solution (without outputs) with exercise ``name``'s planted mistake in place of its solution,
    cut after that exercise's checker cell; and the index of that checker cell."""
    nb = without_outputs(solution)
    for i, cell in enumerate(nb.cells):
        meta = exercise(cell)
        if meta is not None and meta.get("exercise") == name:
            cell.source = meta["wrong"]
            check_at = next(j for j in range(i + 1, len(nb.cells)) if nb.cells[j].cell_type == "code")
            nb.cells = nb.cells[:check_at + 1]
            return nb, check_at
    raise KeyError(f"no exercise {name!r}")


def _comparable(nb) -> list:
    return [(c.cell_type, c.source, {k: v for k, v in c.metadata.items() if k != "execution"})
            for c in nb.cells]


def mismatch(solution, student) -> str | None:
    """None when ``student`` is ``solution`` with the stubs in (outputs ignored); else the first difference."""
    want, have = _comparable(student_from_solution(solution)), _comparable(student)
    if len(want) != len(have):
        return f"the student notebook has {len(have)} cells, its solution {len(want)}"
    for i, (w, h) in enumerate(zip(want, have)):
        if w != h:
            part = ("type", "source", "metadata")[next(k for k in range(3) if w[k] != h[k])]
            return f"cell {i}: its {part} differs from the solution's (with the stubs in)"
    return None


# --- execution --------------------------------------------------------------------------------------------
@contextlib.contextmanager
def this_interpreter_kernel():
    """A kernelspec ``KERNEL`` that launches ``sys.executable``, first on JUPYTER_PATH while inside (a
    ``python3`` kernelspec of the user's could point at any interpreter)."""
    with tempfile.TemporaryDirectory() as root:
        spec_dir = Path(root) / "kernels" / KERNEL
        spec_dir.mkdir(parents=True)
        spec = {"argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                "display_name": "Python 3 (minivolo build)", "language": "python"}
        (spec_dir / "kernel.json").write_text(json.dumps(spec))
        old = os.environ.get("JUPYTER_PATH")
        os.environ["JUPYTER_PATH"] = os.pathsep.join([root] + ([old] if old else []))
        try:
            yield KERNEL
        finally:
            if old is None:
                del os.environ["JUPYTER_PATH"]
            else:
                os.environ["JUPYTER_PATH"] = old


def execute(nb, timeout: int = 600):
    """Run ``nb`` in place, top to bottom, cwd = notebooks/, with this interpreter; returns it.
    Raises nbclient's CellExecutionError (the cell and its traceback) when a cell raises. Call inside
    ``this_interpreter_kernel()``."""
    import nbclient

    nbclient.NotebookClient(nb, timeout=timeout, kernel_name=KERNEL, record_timing=False,
                            resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()
    nb.metadata["kernelspec"] = {"display_name": "Python 3", "language": "python", "name": "python3"}
    return nb


def build(name: str) -> dict:
    """Make and execute the student notebook of ``name`` and re-execute its solution; save both.
    Returns the seconds each took to execute."""
    path = SOLUTIONS / f"{name}.ipynb"
    solution = nbformat.read(path, as_version=4)
    found = problems(solution, path.name)
    if found:
        raise SystemExit("\n".join(found))
    times = {}
    for kind, nb, out in (("solution", without_outputs(solution), path),
                          ("student", student_from_solution(solution), NOTEBOOKS / f"{name}.ipynb")):
        start = time.perf_counter()
        execute(nb)
        times[kind] = time.perf_counter() - start
        nbformat.write(nb, out)
    return times


def names(selected: list[str]) -> list[str]:
    every = sorted(p.stem for p in SOLUTIONS.glob("*.ipynb"))
    for n in selected:
        if n not in every:
            raise SystemExit(f"no solution notebook {SOLUTIONS / (n + '.ipynb')}; there are: {', '.join(every)}")
    return selected or every


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", help="NN_name of solution notebooks (all when none is given)")
    parser.add_argument("--check", action="store_true",
                        help="check that each student notebook matches its solution; execute nothing")
    args = parser.parse_args(argv)
    chosen = names(args.names)
    if args.check:
        failures = []
        for n in chosen:
            solution = nbformat.read(SOLUTIONS / f"{n}.ipynb", as_version=4)
            failures += problems(solution, f"solutions/{n}.ipynb")
            student_path = NOTEBOOKS / f"{n}.ipynb"
            if not student_path.exists():
                failures.append(f"{n}: no student notebook {student_path.name}: run build.py {n}")
                continue
            diff = mismatch(solution, nbformat.read(student_path, as_version=4))
            if diff:
                failures.append(f"{n}.ipynb is out of date ({diff}): run build.py {n}")
        print("\n".join(failures) or f"{len(chosen)} student notebooks match their solutions")
        return 1 if failures else 0
    with this_interpreter_kernel():
        for n in chosen:
            times = build(n)
            print(f"{n}: solution {times['solution']:.1f} s, student {times['student']:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
