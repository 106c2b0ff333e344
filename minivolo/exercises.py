"""Checkers for the course's exercises: grade a student's function and say, kindly, what is wrong.

    check(student_fn, reference_fn, *shapes)   a differentiable op: values and gradients against a
                                               reference on random inputs, then gradcheck
    check_value(student_value, expected)       an answer that is a number, a shape or an array
    check_function(student_fn, cases)          a function without gradients: [(args, expected), ...]

Each returns a ``CheckResult`` (``passed``, ``status``: "passed" | "not implemented" | "wrong" |
"error", ``message``) and prints its verdict. A checker never raises: a stub that raises
``NotImplementedError`` is "not implemented yet", any other exception in the student's code is reported
with its type, its message and the student's line, so a notebook with unsolved exercises still runs
from top to bottom. In a notebook the verdict shows once per cell (printed; the returned result does
not repeat it), and ``repr(result)`` is the verdict.

    >>> def sigmoid(x):  # the student's op: forward and backward side by side
    ...     s = 1 / (1 + np.exp(-x.data))
    ...     return Tensor.from_op(s, (x,), lambda g: (g * s * (1 - s),), "sigmoid")
    >>> result = check(sigmoid, lambda x: 1 / (1 + (-x).exp()), (3, 4))
    ✓ sigmoid: passed: values and gradients match the reference on 3 random inputs, and gradcheck agrees.
    >>> result.passed, result.status
    (True, 'passed')
"""
from __future__ import annotations

import functools
import inspect
import os
import sysconfig
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from . import backend
from .gradcheck import GradcheckError, gradcheck
from .tensor import Tensor

STATUSES = ("passed", "not implemented", "wrong", "error")
_TOLERANCES = {np.dtype(np.float64): (1e-9, 1e-7), np.dtype(np.float32): (1e-5, 1e-4),
               np.dtype(np.float16): (1e-3, 1e-2)}  # dtype -> (atol, rtol)


@dataclass(repr=False)
class CheckResult:
    """The verdict of a checker. ``bool(result)`` is ``result.passed``; ``repr(result)`` is the message.

    inputs: the arguments of the call that went wrong (``student_fn(*result.inputs)`` reproduces it),
    None when nothing went wrong or the answer is not a call.
    """
    passed: bool
    status: str
    message: str
    inputs: tuple | None = None
    _shown_in: Any = field(default=None, compare=False)  # the IPython cell that printed the verdict

    def __bool__(self) -> bool:
        return self.passed

    def __repr__(self) -> str:
        return self.message

    __str__ = __repr__

    def _ipython_display_(self) -> None:
        """In IPython: show the verdict, unless this very cell has printed it already."""
        if self._shown_in is None or self._shown_in != _ipython_cell():
            print(self.message)


def _ipython_cell():
    """An id of the IPython cell being run (its execution count), or None outside IPython."""
    try:
        ip = get_ipython()  # noqa: F821  (defined only inside IPython)
    except NameError:
        return None
    return getattr(ip, "execution_count", None)


def _verdict(name: str, status: str, text: str, inputs: tuple | None = None, verbose: bool = True
             ) -> CheckResult:
    marks = {"passed": "✓", "not implemented": "…", "wrong": "✗", "error": "✗"}
    result = CheckResult(status == "passed", status, f"{marks[status]} {name}: {text}", inputs)
    if verbose:
        print(result.message)
        result._shown_in = _ipython_cell()
    return result


def _not_yet(what: str) -> str:
    return f"not implemented yet ({what} raises NotImplementedError). Fill it in, then run this cell again."


# --- where did it go wrong? -----------------------------------------------------------------------
_LIBRARY_DIRS = tuple(os.path.realpath(p) + os.sep for p in {
    os.path.dirname(os.path.abspath(__file__)),
    *(sysconfig.get_paths().get(k) for k in ("stdlib", "platstdlib", "purelib", "platlib"))} if p)


def _fn_name(fn) -> str:
    while isinstance(fn, functools.partial):
        fn = fn.func
    return getattr(fn, "__name__", None) or type(fn).__name__


def _raised(exc: BaseException) -> str:
    """``ValueError: the message``, then the deepest line of the student's code that it passed through
    (the deepest frame outside minivolo, NumPy and the standard library)."""
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    frames = traceback.extract_tb(exc.__traceback__)
    mine = [f for f in frames if not os.path.realpath(f.filename).startswith(_LIBRARY_DIRS)]
    if mine:
        f = mine[-1]
        text += f"\n    in {f.name}, line {f.lineno}" + (f": {f.line.strip()}" if f.line else "")
    return text


# --- comparing values ---------------------------------------------------------------------------------
def _index(idx) -> str:
    return "(" + ", ".join(str(int(i)) for i in idx) + ("," if len(idx) == 1 else "") + ")"


def _fmt_pair(y, e) -> tuple[str, str]:
    """Both values as text, with enough digits to tell them apart (6 significant ones, more if needed)."""
    if not isinstance(y, (float, np.floating)) and not isinstance(e, (float, np.floating)):
        return repr(getattr(y, "item", lambda: y)()), repr(getattr(e, "item", lambda: e)())
    for digits in (6, 9, 12, 17):
        ys, es = f"{float(y):.{digits}g}", f"{float(e):.{digits}g}"
        if ys != es:
            break
    return ys, es


def _differs(yours: np.ndarray, expected: np.ndarray, what: str, atol: float, rtol: float) -> str | None:
    """None when the arrays agree within ``atol + rtol * |expected|`` (NaN where expected is NaN);
    otherwise how many entries differ and the first one, with both values."""
    if yours.shape != expected.shape:
        return f"{what} has shape {yours.shape}, expected {expected.shape}"
    if expected.dtype.kind == "f" or yours.dtype.kind == "f":
        with np.errstate(invalid="ignore", over="ignore"):
            ok = np.isclose(yours.astype(np.float64, copy=False), expected.astype(np.float64, copy=False),
                            atol=atol, rtol=rtol, equal_nan=True)
    else:
        ok = yours == expected
    if np.all(ok):
        return None
    bad = np.argwhere(~ok)
    first = tuple(bad[0])
    y, e = _fmt_pair(yours[first], expected[first])
    if not expected.ndim:
        return f"{what} is {y}, expected {e}"
    text = (f"{what}: {len(bad)} of {expected.size} entries differ; the first at index {_index(first)}: "
            f"yours {y}, expected {e}")
    ratio = _constant_ratio(yours, expected)
    if ratio is not None:
        text += f" (yours is {ratio:.4g} times the expected everywhere)"
    return text


def _constant_ratio(yours: np.ndarray, expected: np.ndarray) -> float | None:
    """The factor when ``yours == c * expected`` for one c (a sign or a factor of 2 forgotten)."""
    if yours.dtype.kind not in "fiu" or expected.dtype.kind not in "fiu" or expected.size < 2:
        return None
    y, e = yours.astype(np.float64).ravel(), expected.astype(np.float64).ravel()
    nz = np.abs(e) > 1e-12
    if not nz.any() or not np.all(np.isfinite(y)) or np.any(np.abs(y[~nz]) > 1e-9):
        return None
    c = y[nz] / e[nz]
    return float(c[0]) if np.allclose(c, c[0], rtol=1e-6, atol=1e-9) and abs(c[0] - 1) > 1e-6 else None


def _as_host(value) -> np.ndarray:
    return backend.to_numpy(value.data if isinstance(value, Tensor) else value)


def _compare(yours, expected, what: str, atol: float | None, rtol: float | None) -> str | None:
    """None when ``yours`` is the answer ``expected`` (a Tensor, an array, a number, a shape, any
    value); otherwise what is wrong. Tensors and arrays must also have the expected kind and dtype."""
    if isinstance(expected, Tensor) or backend.is_array(expected):
        kind = "a Tensor" if isinstance(expected, Tensor) else "an array"
        if isinstance(expected, Tensor) != isinstance(yours, Tensor) or not (
                isinstance(yours, Tensor) or backend.is_array(yours)):
            return f"{what} is {type(yours).__name__}, expected {kind}"
        y, e = _as_host(yours), _as_host(expected)
        if y.shape == e.shape and y.dtype != e.dtype:
            return f"{what} has dtype {y.dtype}, expected {e.dtype}"
        a, r = _TOLERANCES.get(e.dtype, (0.0, 0.0))
        return _differs(y, e, what, a if atol is None else atol, r if rtol is None else rtol)
    numeric = (bool, int, float, np.number, np.bool_)
    if isinstance(expected, numeric) or (isinstance(expected, (tuple, list)) and expected
                                         and all(isinstance(v, numeric) for v in expected)):
        if isinstance(yours, Tensor) or backend.is_array(yours):
            yours = _as_host(yours)
            yours = yours.item() if yours.size == 1 and isinstance(expected, numeric) else yours.tolist()
        if isinstance(expected, (tuple, list)):
            if not isinstance(yours, (tuple, list)) or len(yours) != len(expected):
                return f"{what} is {yours!r}, expected {tuple(expected)!r}"
            if not all(isinstance(v, numeric) for v in yours):
                return f"{what} is {yours!r}, expected numbers: {tuple(expected)!r}"
        elif not isinstance(yours, numeric):
            return f"{what} is {yours!r} ({type(yours).__name__}), expected a number: {expected!r}"
        y, e = np.asarray(yours), np.asarray(expected)
        exact = e.dtype.kind in "biu" and y.dtype.kind in "biu"
        a, r = (0.0, 0.0) if exact else (1e-8, 1e-5)  # a number worked out in float32 passes
        return _differs(y, e, what, a if atol is None else atol, r if rtol is None else rtol)
    if isinstance(expected, (tuple, list)):  # a tuple of arrays (and numbers): element by element
        if not isinstance(yours, (tuple, list)) or len(yours) != len(expected):
            return f"{what} is {_short(yours)}, expected a {type(expected).__name__} of {len(expected)} items"
        return next((p for i, (y, e) in enumerate(zip(yours, expected))
                     if (p := _compare(y, e, f"{what}[{i}]", atol, rtol))), None)
    if yours != expected:
        return f"{what} is {yours!r}, expected {expected!r}"
    return None


# --- check: a differentiable function against a reference --------------------------------------------
def _outputs(result) -> list:
    if isinstance(result, (tuple, list)):
        return list(result)
    return [result]


def _copy(arg):
    """A private copy of a Tensor (its own data and .grad) or an array argument; others as they are.
    Tensors are copied to the CPU: the student's code works on NumPy arrays."""
    if isinstance(arg, Tensor):
        return Tensor(arg.data.copy(), requires_grad=arg.requires_grad, device="cpu")
    return arg.copy() if backend.is_array(arg) else arg


def _arg_names(fn, n: int) -> list[str]:
    try:
        params = [p.name for p in inspect.signature(fn).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    except (TypeError, ValueError):
        params = []
    return [f"argument {params[i]}" if i < len(params) else f"argument {i}" for i in range(n)]


def _short(a) -> str:
    """An argument in a few words: its kind, shape and dtype for a Tensor or an array, else its repr."""
    if isinstance(a, Tensor):
        return f"Tensor {a.shape} {a.dtype}"
    if backend.is_array(a):
        return f"array {a.shape} {a.dtype}"
    text = repr(a)
    return text if len(text) <= 50 else text[:47] + "..."


def _describe(args: Sequence, names: list[str]) -> str:
    return "; ".join(f"{name}: {_short(a)}" for name, a in zip(names, args))


class _Stop(Exception):
    """A verdict reached inside check's helpers (not an error of the checker)."""

    def __init__(self, status: str, text: str):
        super().__init__(text)
        self.status, self.text = status, text


def _call(fn, args: tuple, who: str, part: str):
    """``fn(*args)``; an exception becomes a _Stop verdict (``who`` is "student" or "reference")."""
    try:
        return fn(*args)
    except _Stop:
        raise
    except Exception as exc:  # noqa: BLE001  (any exception of the student's code becomes the verdict)
        if who == "reference":
            raise _Stop("error", f"the reference raised {_raised(exc)} in its {part} "
                                 "(a bug in the exercise, not in your code)") from None
        if isinstance(exc, NotImplementedError):
            raise _Stop("not implemented", _not_yet(f"its {part}")) from None
        raise _Stop("error", f"your {part} raised {_raised(exc)}") from None


def _guard_backward(out: Tensor, names: dict) -> None:
    """Wrap the backward closure of the student's output so that a malformed return value (a bare
    array instead of a tuple, Tensors instead of arrays, a shape that cannot be reduced to the
    parent's) is reported as such, instead of as a puzzling error deep inside Tensor.backward."""
    closure, parents = getattr(out, "_backward", None), getattr(out, "_parents", ())
    if closure is None or not parents:
        return

    def guarded(g):
        grads = closure(g)
        n = len(parents)
        if not isinstance(grads, (tuple, list)):
            raise _Stop("wrong", f"your backward returned {type(grads).__name__}; it must return a tuple with "
                                 f"one gradient array (or None) per parent, here {n}: `return (gx,)`")
        if len(grads) != n:
            raise _Stop("wrong", f"your backward returned {len(grads)} gradients for {n} "
                                 f"parent{'s' if n != 1 else ''}: one per parent, in their order")
        for k, (p, pg) in enumerate(zip(parents, grads)):
            who = names.get(id(p), f"parent {k}")
            if pg is None:
                continue
            if isinstance(pg, Tensor) or not (backend.is_array(pg) or isinstance(pg, np.generic)):
                raise _Stop("wrong", f"your backward returned {type(pg).__name__} as the gradient of {who}; "
                                     "backward works on arrays (a Tensor's array is its .data)")
            try:
                reducible = np.broadcast_shapes(pg.shape, p.shape) == pg.shape
            except ValueError:
                reducible = False
            if not reducible:
                raise _Stop("wrong", f"your backward returned a gradient of shape {pg.shape} for {who}, "
                                     f"expected {p.shape}")
        return grads
    out._backward = guarded


def _backward(outs: list, weights: list, who: str) -> None:
    """backward of sum_k <outs[k], weights[k]> over the outputs that get a weight."""
    total = None
    for o, w in zip(outs, weights):
        if w is not None:
            term = (o * Tensor(w.astype(o.dtype), device=o.device)).sum()
            total = term if total is None else total + term
    _call(total.backward, (), who, "backward")


def _trial(student_fn, reference_fn, args: tuple, names: list[str], rng, grad: bool,
           atol: float | None, rtol: float | None) -> str | None:
    """One comparison on ``args``; None when the student's function agrees with the reference."""
    ref_args, my_args = tuple(map(_copy, args)), tuple(map(_copy, args))
    before = [_as_host(a).copy() if isinstance(a, Tensor) or backend.is_array(a) else None for a in my_args]
    expected = _outputs(_call(reference_fn, ref_args, "reference", "forward"))
    yours = _outputs(_call(student_fn, my_args, "student", "forward"))
    for name, a, b in zip(names, my_args, before):
        if b is not None and not np.array_equal(_as_host(a), b, equal_nan=True):
            return f"your function changed its input {name} in place; compute a new array instead"
    if len(yours) != len(expected):
        return f"it returned {len(yours)} outputs, expected {len(expected)}"
    for k, (y, e) in enumerate(zip(yours, expected)):
        what = "the output" if len(expected) == 1 else f"output {k}"
        problem = _compare(y, e, what, atol, rtol)
        if problem:
            return problem
    if not grad:
        return None
    weights = [rng.standard_normal(e.shape) if isinstance(e, Tensor) and e.requires_grad else None
               for e in expected]
    if all(w is None for w in weights):
        return None
    for k, (y, w) in enumerate(zip(yours, weights)):
        if w is not None and not y.requires_grad:
            what = "the output" if len(expected) == 1 else f"output {k}"
            return (f"{what} carries no gradient (requires_grad is False): build it with "
                    "Tensor.from_op(data, parents, backward) or from Tensor operations, not from raw arrays")
    _backward(expected, weights, "reference")
    arg_names = {id(a): name for name, a in zip(names, my_args) if isinstance(a, Tensor)}
    for y in yours:
        _guard_backward(y, arg_names)
    _backward(yours, weights, "student")
    for name, r, m in zip(names, ref_args, my_args):
        if not (isinstance(r, Tensor) and r.requires_grad):
            continue
        what = f"the gradient with respect to {name}"
        if r.grad is None and m.grad is None:  # the output does not depend on it
            continue
        if m.grad is None:
            return f"no gradient reached {name}: your backward returned None for it"
        expected_grad = r.grad if r.grad is not None else Tensor(m.grad.xp.zeros_like(m.grad.data),
                                                                 device=m.grad.device)
        problem = _compare(m.grad, expected_grad, what, atol, rtol)
        if problem:
            return problem
    return None


def _random_args(shapes: Sequence, inputs, rng, dtype, grad: bool, tensors: bool) -> tuple:
    draws = [rng.standard_normal(tuple(s) if isinstance(s, (tuple, list)) else (s,)).astype(dtype)
             for s in shapes]
    # on the CPU whatever the default device: the student's code works on NumPy arrays
    args = [Tensor(a, requires_grad=grad, device="cpu") for a in draws] if tensors else draws
    if inputs is not None:
        args.extend(inputs(rng) if callable(inputs) else inputs)
    return tuple(args)


def _float64(arg):
    if isinstance(arg, Tensor) and arg.requires_grad:
        return Tensor(arg.data.astype(np.float64), requires_grad=True, device="cpu")
    return _copy(arg)


def _finite_differences(student_fn, args: tuple) -> None:
    """gradcheck of the student's function on float64 ``args``; a failure raises _Stop with the verdict."""
    for out in _outputs(_call(student_fn, tuple(map(_copy, args)), "student", "forward")):
        if isinstance(out, Tensor) and out.dtype.kind == "f" and out.dtype != np.float64:
            raise _Stop("wrong", f"on float64 inputs your function returns {out.dtype}: keep the input's dtype "
                                 "(gradcheck needs float64)")
    try:
        gradcheck(student_fn, *args)
    except GradcheckError as exc:
        raise _Stop("wrong", "your gradient disagrees with finite differences (gradcheck): "
                             f"{str(exc).replace('gradcheck failed:', '').strip()}") from None
    except Exception as exc:  # noqa: BLE001
        kind = "not implemented" if isinstance(exc, NotImplementedError) else "error"
        raise _Stop(kind, f"gradcheck (in float64) ran into {_raised(exc)}") from None


def check(student_fn: Callable, reference_fn: Callable, *shapes, dtype=np.float64, trials: int = 3,
          atol: float | None = None, rtol: float | None = None, seed: int = 0, grad: bool = True,
          inputs=None, tensors: bool = True, finite_differences: bool = True, verbose: bool = True
          ) -> CheckResult:
    """Grade ``student_fn`` against ``reference_fn`` on ``trials`` random inputs; never raises.

    shapes: one shape per random argument, a standard-normal Tensor of ``dtype`` (requiring grad when
        ``grad``), drawn anew for every trial from ``np.random.default_rng(seed)``.
    inputs: more arguments after the random ones: a sequence (the same in every trial; a Tensor with
        ``requires_grad=True`` gets its gradient checked) or a callable ``inputs(rng) -> tuple`` that
        draws them (integer targets, positive numbers...). Fixed options (a kernel size) are best
        bound with ``functools.partial`` on both functions.
    tensors: False makes the random arguments NumPy arrays, for exercises on raw arrays (col2im,
        as_strided); array outputs are compared like Tensors, and there is no gradient to check.
    finite_differences: False skips the gradcheck step, which evaluates the function twice per input
        entry (for a whole layer on larger inputs; the gradients are still compared with the reference's).
    verbose: print the verdict (the default); the returned result holds it either way.
    Each trial compares the outputs (kind, count, shape, dtype, values within ``atol + rtol*|expected|``,
    defaults by dtype), then, when ``grad``, the gradient of ``sum_k <out_k, w_k>`` (the same random
    weights ``w_k`` for both) with respect to every input that requires grad. Last, ``gradcheck`` checks
    the student's gradient against finite differences in float64.
    Returns a CheckResult; its status is "passed", "not implemented" (the function raises
    NotImplementedError), "wrong" (the first problem: which trial, which argument, the first entry that
    differs) or "error" (an exception: its type, message and the line of the student's code).
    """
    name = _fn_name(student_fn)
    args: tuple | None = None
    try:
        rng = np.random.default_rng(seed)
        for t in range(trials):
            args = _random_args(shapes, inputs, rng, dtype, grad, tensors)
            names = _arg_names(student_fn, len(args))
            problem = _trial(student_fn, reference_fn, args, names, rng, grad, atol, rtol)
            if problem:
                return _verdict(name, "wrong", f"wrong on trial {t + 1} of {trials} ({_describe(args, names)}):"
                                               f"\n    {problem}", args, verbose)
        graded = grad and args is not None and any(isinstance(a, Tensor) and a.requires_grad for a in args)
        text = f"passed: values {'and gradients ' if graded else ''}match the reference on {trials} random inputs"
        if graded and finite_differences:
            args = tuple(map(_float64, args))
            _finite_differences(student_fn, args)
            text += ", and gradcheck agrees"
        return _verdict(name, "passed", text + ".", None, verbose)
    except _Stop as stop:
        return _verdict(name, stop.status, stop.text, args, verbose)
    except Exception as exc:  # noqa: BLE001  (a checker never raises inside a notebook)
        return _verdict(name, "error", f"the checker could not run: {_raised(exc)}", args, verbose)


# --- answers that are values, and functions without gradients ----------------------------------------
def check_value(student_value, expected, name: str = "answer", atol: float | None = None,
                rtol: float | None = None, verbose: bool = True) -> CheckResult:
    """Grade an answer that is a value: a number (exact for integers), a shape, an array or a Tensor
    (kind, shape, dtype and values), or anything comparable with ``==``. ``student_value`` may be a
    function of no arguments (a stub that raises NotImplementedError); ``None`` and ``...`` mean "not
    answered yet". Never raises."""
    try:
        if callable(student_value) and not isinstance(student_value, Tensor):
            name = _fn_name(student_value) if name == "answer" else name
            try:
                student_value = student_value()
            except NotImplementedError:
                return _verdict(name, "not implemented", _not_yet("it"), (), verbose)
            except Exception as exc:  # noqa: BLE001
                return _verdict(name, "error", f"it raised {_raised(exc)}", (), verbose)
        if student_value is None or student_value is Ellipsis:
            return _verdict(name, "not implemented", "not answered yet (replace the ... with your answer).",
                            None, verbose)
        problem = _compare(student_value, expected, "your value", atol, rtol)
        if problem:
            return _verdict(name, "wrong", problem, None, verbose)
        return _verdict(name, "passed", "passed: that is right.", None, verbose)
    except Exception as exc:  # noqa: BLE001
        return _verdict(name, "error", f"the checker could not run: {_raised(exc)}", None, verbose)


def check_function(student_fn: Callable, cases: Sequence, atol: float | None = None,
                   rtol: float | None = None, verbose: bool = True) -> CheckResult:
    """Grade a function without gradients (a learning-rate schedule, a shape formula) on ``cases``:
    a list of ``(args, expected)``, ``args`` a tuple of positional arguments (or one argument that is
    not a tuple). Each result is compared as by ``check_value``. Never raises."""
    name = _fn_name(student_fn)
    args: tuple = ()
    try:
        cases = list(cases)
        for i, (args, expected) in enumerate(cases):
            args = args if isinstance(args, tuple) else (args,)
            call = f"{name}({', '.join(_short(a) for a in args)})"
            try:
                yours = student_fn(*args)
            except NotImplementedError:
                return _verdict(name, "not implemented", _not_yet("it"), args, verbose)
            except Exception as exc:  # noqa: BLE001
                return _verdict(name, "error", f"case {i + 1} of {len(cases)}: {call} raised {_raised(exc)}",
                                args, verbose)
            problem = _compare(yours, expected, call, atol, rtol)
            if problem:
                return _verdict(name, "wrong", f"case {i + 1} of {len(cases)}: {problem}", args, verbose)
        return _verdict(name, "passed", f"passed: all {len(cases)} cases are right.", None, verbose)
    except Exception as exc:  # noqa: BLE001
        return _verdict(name, "error", f"the checker could not run: {_raised(exc)}", args, verbose)
