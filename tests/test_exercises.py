"""The course's checkers (minivolo.exercises) and the graph drawing (minivolo.viz). No torch needed.

A checker must pass a right answer, report a stub as "not implemented", catch each kind of wrong
answer with the numbers that show it, turn any exception of the student's code into a verdict, and
never raise.
"""
from __future__ import annotations

import contextlib
import functools
import inspect
import io
import math

import numpy as np
import pytest

from minivolo import Tensor
from minivolo.exercises import STATUSES, CheckResult, check, check_function, check_value
from minivolo.viz import draw_graph, graph_layout


# --- a sigmoid op, as a student writes it, and a reference composed from exp -----------------------
def reference_sigmoid(x):
    return 1 / (1 + (-x).exp())


def sigmoid(x):
    s = 1 / (1 + np.exp(-x.data))
    return Tensor.from_op(s, (x,), lambda g: (g * s * (1 - s),), "sigmoid")


def sigmoid_stub(x):
    raise NotImplementedError


def sigmoid_backward_stub(x):
    def backward(g):
        raise NotImplementedError
    return Tensor.from_op(1 / (1 + np.exp(-x.data)), (x,), backward, "sigmoid")


def sigmoid_wrong_forward(x):  # sigmoid(-x)
    s = 1 / (1 + np.exp(x.data))
    return Tensor.from_op(s, (x,), lambda g: (g * s * (1 - s),), "sigmoid")


def sigmoid_wrong_backward(x):  # right values, gradient s instead of s (1 - s)
    s = 1 / (1 + np.exp(-x.data))
    return Tensor.from_op(s, (x,), lambda g: (g * s,), "sigmoid")


def sigmoid_transposed(x):
    s = 1 / (1 + np.exp(-x.data))
    return Tensor.from_op(s.T, (x,), lambda g: (g.T * s * (1 - s),), "sigmoid")


def sigmoid_float32(x):
    s = (1 / (1 + np.exp(-x.data))).astype(np.float32)
    return Tensor.from_op(s, (x,), lambda g: (g * s * (1 - s),), "sigmoid")


def sigmoid_raises(x):
    s = 1 / (1 + np.exp(-x.data))
    s = s @ np.ones((7, 2))  # the planted bug: (3, 4) @ (7, 2)
    return Tensor.from_op(s, (x,), lambda g: (g * s * (1 - s),), "sigmoid")


def sigmoid_backward_raises(x):
    s = 1 / (1 + np.exp(-x.data))

    def backward(g):
        return (g @ s,)  # the planted bug: (3, 4) @ (3, 4)
    return Tensor.from_op(s, (x,), backward, "sigmoid")


def sigmoid_without_graph(x):
    return Tensor(1 / (1 + np.exp(-x.data)))


def sigmoid_in_place(x):
    x.data *= -1  # the planted bug: changes the caller's input
    s = 1 / (1 + np.exp(x.data))
    return Tensor.from_op(s, (x,), lambda g: (g * s * (1 - s),), "sigmoid")


def _line_of(fn, text: str) -> int:
    """The line number (in this file) of the line of ``fn`` that contains ``text``."""
    lines, start = inspect.getsourcelines(fn)
    return start + next(i for i, line in enumerate(lines) if text in line)


def _first_trial_input(shape=(3, 4), seed=0):
    """The first random input check() draws: standard normal from default_rng(seed)."""
    return np.random.default_rng(seed).standard_normal(shape)


def _sig(x):
    return 1 / (1 + np.exp(-x))


def _g(v) -> str:
    return f"{v:.6g}"


def test_a_right_answer_passes(capsys):
    result = check(sigmoid, reference_sigmoid, (3, 4))
    assert isinstance(result, CheckResult)
    assert result.passed and result and result.status == "passed"
    assert "values and gradients match the reference on 3 random inputs" in result.message
    assert "gradcheck agrees" in result.message
    assert repr(result) == str(result) == result.message
    assert capsys.readouterr().out == result.message + "\n"  # printed once


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_a_right_answer_passes_in_both_precisions(dtype):
    assert check(sigmoid, reference_sigmoid, (2, 5), dtype=dtype, verbose=False).passed


def test_a_stub_is_not_implemented():
    result = check(sigmoid_stub, reference_sigmoid, (3, 4), verbose=False)
    assert (result.passed, result.status) == (False, "not implemented")
    assert result.message.startswith("… sigmoid_stub: not implemented yet")
    result = check(sigmoid_backward_stub, reference_sigmoid, (3, 4), verbose=False)
    assert result.status == "not implemented" and "backward raises NotImplementedError" in result.message


def test_a_wrong_forward_is_caught_with_the_first_differing_entry():
    result = check(sigmoid_wrong_forward, reference_sigmoid, (3, 4), verbose=False)
    assert (result.passed, result.status) == (False, "wrong")
    x = _first_trial_input()
    assert "trial 1 of 3" in result.message and "argument x: Tensor (3, 4) float64" in result.message
    assert (f"12 of 12 entries differ; the first at index (0, 0): yours {_g(_sig(-x[0, 0]))}, "
            f"expected {_g(_sig(x[0, 0]))}") in result.message
    np.testing.assert_array_equal(result.inputs[0].data, x)  # the failing call, to reproduce it
    np.testing.assert_allclose(sigmoid_wrong_forward(result.inputs[0]).data, _sig(-x))


def test_a_wrong_backward_is_caught_though_the_values_are_right():
    result = check(sigmoid_wrong_backward, reference_sigmoid, (3, 4), verbose=False)
    assert result.status == "wrong"
    assert "the gradient with respect to argument x" in result.message
    # check() weights the outputs with the next draw of its generator: d<s, w>/dx = w s (1 - s)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 4))
    w = rng.standard_normal((3, 4))
    s = _sig(x)
    assert f"yours {_g(w[0, 0] * s[0, 0])}, expected {_g(w[0, 0] * s[0, 0] * (1 - s[0, 0]))}" in result.message


def test_a_backward_off_by_a_factor_gets_a_hint():
    def doubled(x):
        s = 1 / (1 + np.exp(-x.data))
        return Tensor.from_op(s, (x,), lambda g: (2 * g * s * (1 - s),), "sigmoid")
    result = check(doubled, reference_sigmoid, (3, 4), verbose=False)
    assert result.status == "wrong" and "yours is 2 times the expected everywhere" in result.message


def _sigmoid_with_backward(backward):
    def student(x):
        s = 1 / (1 + np.exp(-x.data))
        return Tensor.from_op(s, (x,), lambda g: backward(g, s), "sigmoid")
    return student


@pytest.mark.parametrize("backward, words", [
    (lambda g, s: g * s * (1 - s), "returned ndarray; it must return a tuple with one gradient"),
    (lambda g, s: (Tensor(g * s * (1 - s)),), "returned Tensor as the gradient of argument x"),
    (lambda g, s: (g * s * (1 - s), g), "returned 2 gradients for 1 parent"),
    (lambda g, s: (g[0],), "a gradient of shape (4,) for argument x, expected (3, 4)"),
    (lambda g, s: (g.sum(axis=1),), "a gradient of shape (3,) for argument x, expected (3, 4)"),
])
def test_a_malformed_backward_is_named(backward, words):
    result = check(_sigmoid_with_backward(backward), reference_sigmoid, (3, 4), verbose=False)
    assert result.status == "wrong" and words in result.message, result.message


def test_a_wrong_shape_and_a_wrong_dtype_are_caught():
    result = check(sigmoid_transposed, reference_sigmoid, (3, 4), verbose=False)
    assert result.status == "wrong" and "the output has shape (4, 3), expected (3, 4)" in result.message
    result = check(sigmoid_float32, reference_sigmoid, (3, 4), verbose=False)
    assert result.status == "wrong" and "the output has dtype float32, expected float64" in result.message
    result = check(sigmoid_float32, reference_sigmoid, (3, 4), dtype=np.float32, verbose=False)
    assert result.status == "wrong" and "on float64 inputs your function returns float32" in result.message


def test_an_output_without_a_graph_and_an_input_changed_in_place_are_caught():
    result = check(sigmoid_without_graph, reference_sigmoid, (3, 4), verbose=False)
    assert result.status == "wrong" and "carries no gradient" in result.message
    result = check(sigmoid_in_place, reference_sigmoid, (3, 4), verbose=False)
    assert result.status == "wrong" and "changed its input argument x in place" in result.message


def test_an_exception_in_the_forward_names_its_type_message_and_line():
    result = check(sigmoid_raises, reference_sigmoid, (3, 4), verbose=False)
    assert (result.passed, result.status) == (False, "error")
    assert "your forward raised ValueError: matmul" in result.message
    line = _line_of(sigmoid_raises, "the planted bug")
    assert f"in sigmoid_raises, line {line}: s = s @ np.ones((7, 2))" in result.message


def test_an_exception_in_the_backward_names_its_line():
    result = check(sigmoid_backward_raises, reference_sigmoid, (3, 4), verbose=False)
    assert result.status == "error" and "your backward raised ValueError" in result.message
    line = _line_of(sigmoid_backward_raises, "the planted bug")
    assert f"in backward, line {line}: return (g @ s,)" in result.message


@pytest.mark.parametrize("student, reference, shapes, kwargs, status, words", [
    (lambda x: None, reference_sigmoid, [(2,)], {}, "wrong", "the output is NoneType, expected a Tensor"),
    (lambda x: (x, x), reference_sigmoid, [(2,)], {}, "wrong", "it returned 2 outputs, expected 1"),
    (lambda: 1, reference_sigmoid, [(2,)], {}, "error", "TypeError"),
    (sigmoid, lambda x: 1 / 0, [(2,)], {}, "error", "the reference raised ZeroDivisionError"),
    (sigmoid, reference_sigmoid, ["not a shape"], {}, "error", "the checker could not run"),
    (lambda x: x.item(), lambda x: x.sum(), [(2,)], {}, "error", "ValueError"),
    (sigmoid, reference_sigmoid, [(2,)], {"inputs": 3}, "error", "the checker could not run"),
])
def test_the_checker_never_raises(student, reference, shapes, kwargs, status, words):
    result = check(student, reference, *shapes, verbose=False, **kwargs)
    assert result.status == status and words in result.message, result.message


def test_gradcheck_catches_a_gradient_wrong_in_the_reference_too():
    # student and reference share the wrong backward: only finite differences can tell
    result = check(sigmoid_wrong_backward, sigmoid_wrong_backward, (3, 4), verbose=False)
    assert result.status == "wrong" and "disagrees with finite differences (gradcheck)" in result.message
    assert check(sigmoid_wrong_backward, sigmoid_wrong_backward, (3, 4), grad=False, verbose=False).passed
    skipped = check(sigmoid_wrong_backward, sigmoid_wrong_backward, (3, 4), finite_differences=False,
                    verbose=False)
    assert skipped.passed and "values and gradients match" in skipped.message
    assert "gradcheck" not in skipped.message


def pick(x, target):
    """x[i, target[i]] for each row i: x (N, C), target (N,) int -> (N,)."""
    rows = np.arange(x.shape[0])

    def backward(g):
        gx = np.zeros_like(x.data)
        gx[rows, target] = g
        return (gx,)
    return Tensor.from_op(x.data[rows, target], (x,), backward, "pick")


def test_explicit_inputs_integer_targets_and_partial():
    targets = lambda rng: (rng.integers(0, 5, size=4),)  # noqa: E731
    reference = lambda x, t: x[np.arange(4), t]  # noqa: E731
    assert check(pick, reference, (4, 5), inputs=targets, verbose=False).passed

    def pick_first(x, target):  # ignores the target
        return pick(x, np.zeros_like(target))
    result = check(pick_first, reference, (4, 5), inputs=targets, verbose=False)
    assert result.status == "wrong" and result.inputs[1].dtype.kind == "i"

    def scaled(x, factor):
        return x * factor
    assert check(functools.partial(scaled, factor=3.0), lambda x: x + x + x, (2, 3), verbose=False).passed


def test_an_op_on_a_single_number_passes():
    assert check(sigmoid, reference_sigmoid, (), verbose=False).passed  # numpy returns scalars here


def test_a_gradient_where_none_is_expected_is_caught():
    def mul(x, y):  # y's gradient for an op that ignores y
        return Tensor.from_op(x.data * 2, (x, y), lambda g: (2 * g, g), "mul")
    result = check(mul, lambda x, y: x * 2, (3,), (3,), verbose=False)
    assert result.status == "wrong" and "the gradient with respect to argument y" in result.message


def col2im_loop(cols, k):
    """(N, C*k*k, L) columns of a stride-1, unpadded k x k unfold -> (N, C, H, W) sums,
    H = W = sqrt(L) + k - 1: a loop over the k*k kernel offsets, each a slice-add (notebook 02's exercise)."""
    n, ckk, length = cols.shape
    c, side = ckk // (k * k), int(round(length ** 0.5))
    out = np.zeros((n, c, side + k - 1, side + k - 1), cols.dtype)
    cols = cols.reshape(n, c, k, k, side, side)
    for i in range(k):
        for j in range(k):
            out[:, :, i:i + side, j:j + side] += cols[:, :, i, j]
    return out


def col2im_by_pixels(cols, k):
    """The same sums, pixel by pixel: the slow reference."""
    n, ckk, length = cols.shape
    c, side = ckk // (k * k), int(round(length ** 0.5))
    out = np.zeros((n, c, side + k - 1, side + k - 1), cols.dtype)
    cols = cols.reshape(n, c, k, k, side, side)
    for y in range(side):
        for x in range(side):
            out[:, :, y:y + k, x:x + k] += cols[:, :, :, :, y, x]
    return out


def test_an_exercise_on_raw_arrays():
    ref = functools.partial(col2im_by_pixels, k=3)
    result = check(functools.partial(col2im_loop, k=3), ref, (2, 2 * 9, 16), tensors=False, verbose=False)
    assert result.passed and "values match the reference on 3 random inputs." in result.message

    def col2im_overwrites(cols, k):  # = instead of +=: overlapping windows lose their sums
        n, ckk, length = cols.shape
        c, side = ckk // (k * k), int(round(length ** 0.5))
        out = np.zeros((n, c, side + k - 1, side + k - 1), cols.dtype)
        for i in range(k):
            for j in range(k):
                out[:, :, i:i + side, j:j + side] = cols.reshape(n, c, k, k, side, side)[:, :, i, j]
        return out
    result = check(functools.partial(col2im_overwrites, k=3), ref, (2, 18, 16), tensors=False, verbose=False)
    assert result.status == "wrong" and "argument cols: array (2, 18, 16) float64" in result.message
    assert isinstance(result.inputs[0], np.ndarray)

    def in_place(cols, k):
        cols *= 1.0 + 1e-3
        return col2im_loop(cols, k)
    result = check(functools.partial(in_place, k=3), ref, (1, 9, 4), tensors=False, verbose=False)
    assert result.status == "wrong" and "changed its input argument cols in place" in result.message


def test_a_gradient_that_does_not_reach_an_input_is_caught():
    def mul(x, y):
        return Tensor.from_op(x.data * y.data, (x, y), lambda g: (g * y.data, None), "mul")
    y = Tensor(np.linspace(-1, 1, 6).reshape(2, 3), requires_grad=True)
    result = check(mul, lambda x, y: x * y, (2, 3), inputs=[y], verbose=False)
    assert result.status == "wrong" and "no gradient reached argument y" in result.message
    assert y.grad is None  # the checker works on copies of the inputs
    assert check(mul, lambda x, y: x * y, (2, 3), inputs=[Tensor(y.data)], verbose=False).passed


def test_the_verdict_shows_once_per_ipython_cell(capsys, monkeypatch):
    """In IPython, check prints its verdict; the returned result does not repeat it in the same cell,
    and shows it when displayed from a later cell."""
    import builtins

    class Shell:
        execution_count = 5
    monkeypatch.setattr(builtins, "get_ipython", lambda: Shell, raising=False)
    result = check(sigmoid_stub, reference_sigmoid, (2,))
    result._ipython_display_()  # IPython's display hook, same cell
    assert capsys.readouterr().out == result.message + "\n"
    Shell.execution_count = 6
    result._ipython_display_()
    assert capsys.readouterr().out == result.message + "\n"
    quiet = check(sigmoid, reference_sigmoid, (2,), verbose=False)
    quiet._ipython_display_()
    assert capsys.readouterr().out == quiet.message + "\n"


def test_in_a_real_ipython_shell_the_verdict_appears_once(tmp_path, monkeypatch):
    interactiveshell = pytest.importorskip("IPython.core.interactiveshell")
    from traitlets.config import Config

    monkeypatch.setenv("IPYTHONDIR", str(tmp_path))  # nothing written to the user's ~/.ipython
    config = Config()
    config.HistoryManager.enabled = False
    shell = interactiveshell.InteractiveShell.instance(config=config)
    try:
        shell.user_ns.update(check=check, sigmoid_stub=sigmoid_stub, reference_sigmoid=reference_sigmoid)
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            shell.run_cell("check(sigmoid_stub, reference_sigmoid, (2,))", store_history=True)
            shell.run_cell("r = _", store_history=True)
            shell.run_cell("r", store_history=True)
    finally:
        interactiveshell.InteractiveShell.clear_instance()
    assert out.getvalue().count("not implemented yet") == 2, out.getvalue()  # the call, then `r`


# --- check_value and check_function -------------------------------------------------------------------
@pytest.mark.parametrize("answer, expected, status, words", [
    (1234, 1234, "passed", "passed"),
    (np.int64(1234), 1234, "passed", "passed"),
    (1235, 1234, "wrong", "your value is 1235, expected 1234"),
    (1234.0000001, 1234, "passed", "passed"),  # a count computed in floats
    (float(np.float32(np.log(10))), float(np.log(10)), "passed", "passed"),  # worked out in float32
    (2.3, float(np.log(10)), "wrong", "your value is 2.3, expected 2.30259"),
    (0.1 + 0.2, 0.3, "passed", "passed"),
    (None, 1234, "not implemented", "not answered yet"),
    (..., 1234, "not implemented", "not answered yet"),
    ("1234", 1234, "wrong", "expected a number"),
    ((2, 196, 384), (2, 196, 384), "passed", "passed"),
    ((2, 384, 196), (2, 196, 384), "wrong", "index (1,): yours 384, expected 196"),
    ((2, 196), (2, 196, 384), "wrong", "your value is (2, 196), expected (2, 196, 384)"),
    (np.arange(4.0), np.array([0.0, 1.0, 3.0, 3.0]), "wrong",
     "1 of 4 entries differ; the first at index (2,): yours 2, expected 3"),
    (np.arange(4), np.arange(4.0), "wrong", "dtype int64, expected float64"),
    (np.arange(4.0), Tensor(np.arange(4.0)), "wrong", "your value is ndarray, expected a Tensor"),
    (Tensor(np.eye(2)), Tensor(np.eye(2)), "passed", "passed"),
    ("relu", "relu", "passed", "passed"),
    ("gelu", "relu", "wrong", "your value is 'gelu', expected 'relu'"),
])
def test_check_value(answer, expected, status, words):
    result = check_value(answer, expected, "n_params", verbose=False)
    assert result.status == status and words in result.message, result.message
    assert result.message.split(": ")[0].endswith("n_params")


def test_values_that_differ_late_are_shown_with_enough_digits():
    result = check_value(0.1234567, 0.1234568, atol=0, rtol=1e-9, verbose=False)
    assert "your value is 0.1234567, expected 0.1234568" in result.message
    assert check_value(0.1234567, 0.1234568, rtol=1e-5, verbose=False).passed


def test_check_value_calls_a_stub_function():
    def block_params():
        raise NotImplementedError
    result = check_value(block_params, 42, verbose=False)
    assert result.status == "not implemented" and "block_params" in result.message

    def block_params():  # noqa: F811
        return {}["weight"]
    result = check_value(block_params, 42, verbose=False)
    assert result.status == "error" and "KeyError: 'weight'" in result.message

    assert check_value(lambda: 6 * 7, 42, verbose=False).passed


def cosine_lr(step, base_lr=1.0, warmup=2, total=10):
    """Linear warm-up over ``warmup`` steps, then cosine decay to 0 at ``total``."""
    if step < warmup:
        return base_lr * (step + 1) / warmup
    return 0.5 * base_lr * (1 + math.cos(math.pi * (step - warmup) / (total - warmup)))


SCHEDULE = [((s,), cosine_lr(s)) for s in range(10)]


def test_check_function():
    assert check_function(cosine_lr, SCHEDULE, verbose=False).passed

    def no_warmup(step):
        return cosine_lr(step, warmup=0)
    result = check_function(no_warmup, SCHEDULE, verbose=False)
    assert result.status == "wrong"
    assert f"case 1 of 10: no_warmup(0) is 1, expected {_g(cosine_lr(0))}" in result.message
    assert result.inputs == (0,)

    def stub(step):
        raise NotImplementedError
    assert check_function(stub, SCHEDULE, verbose=False).status == "not implemented"

    def divides(step):
        return 1 / step
    result = check_function(divides, [(3, 1 / 3), (0, 0.0)], verbose=False)
    assert result.status == "error" and "case 2 of 2: divides(0) raised ZeroDivisionError" in result.message
    assert check_function(divides, [(3, 1 / 3)], verbose=False).passed  # a bare argument, not a tuple
    assert check_function(divides, "not cases", verbose=False).status == "error"
    result = check_function(np.sum, [((np.arange(3.0),), 4.0)], verbose=False)
    assert "case 1 of 1: sum(array (3,) float64) is 3, expected 4" in result.message


def test_statuses_are_the_documented_ones():
    results = [check(f, reference_sigmoid, (2,), verbose=False)
               for f in (sigmoid, sigmoid_stub, sigmoid_wrong_forward, sigmoid_raises)]
    assert [r.status for r in results] == list(STATUSES)


# --- the graph picture --------------------------------------------------------------------------------
def _expression():
    a = Tensor(np.array(2.0), requires_grad=True)
    b = Tensor(np.array(-3.0), requires_grad=True)
    c = a * b
    d = c + a
    e = d.sum()
    return a, b, c, d, e


def test_graph_layout_of_a_small_expression():
    a, b, c, d, e = _expression()
    layout = graph_layout(e, names=dict(a=a, b=b, c=c, d=d, e=e, other=3))
    tensors = [n for n in layout.nodes if n.kind == "tensor"]
    ops = [n.label for n in layout.nodes if n.kind == "op"]
    assert [n.label.split("\n")[0] for n in tensors] == ["a", "b", "c", "d", "e"]
    assert ops == ["mul", "add", "sum"]
    label = {i: n.label.split("\n")[0] for i, n in enumerate(layout.nodes)}
    assert sorted((label[i], label[j]) for i, j in layout.edges) == sorted([
        ("a", "mul"), ("b", "mul"), ("mul", "c"), ("c", "add"), ("a", "add"), ("add", "d"), ("d", "sum"),
        ("sum", "e")])
    assert all(layout.nodes[i].x < layout.nodes[j].x for i, j in layout.edges)  # parent left of child
    assert tensors[0].label == "a\ndata 2" and tensors[-1].role == "output" and not layout.freed


def test_graph_layout_details():
    x = Tensor(np.ones((2, 3)), requires_grad=True)
    y = x * x
    layout = graph_layout(y)
    assert len(layout.nodes) == 3 and len(layout.edges) == 2  # one edge for x, used twice by mul
    assert layout.nodes[0].label == "(2, 3) float64"
    z = (y * 2.0).sum()
    constant = [n for n in graph_layout(z).nodes if n.role == "constant"]
    assert len(constant) == 1 and constant[0].x == 2  # just before the mul that uses it (column 3)
    z.backward()
    freed = graph_layout(z)
    assert freed.freed and len(freed.nodes) == 1 and not freed.edges
    with pytest.raises(ValueError, match="max_nodes=2"):
        graph_layout((x * x).sum(), max_nodes=2)
    with pytest.raises(TypeError, match="expects a Tensor"):
        graph_layout(np.ones(2))


def test_draw_graph_draws_every_node_and_edge_and_saves_a_png(tmp_path):
    from matplotlib.figure import Figure

    a, b, c, d, e = _expression()
    fig = draw_graph(e, names=locals())
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    gids = [p.get_gid() for p in ax.patches]
    assert gids.count("tensor") == 5 and gids.count("op") == 3 and gids.count("edge") == 8
    assert sorted(t.get_text() for t in ax.texts if "\n" not in t.get_text()) == ["add", "mul", "sum"]
    path = tmp_path / "graph.png"
    fig.savefig(path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 1000

    other = Figure().subplots()
    assert draw_graph(e, ax=other) is other and len(other.patches) == 16


def test_check_function_compares_tuples_of_arrays_item_by_item():
    expected = (np.arange(3.0), np.ones((2, 2)))
    right = check_function(lambda s: (np.arange(3.0), np.ones((2, 2))), [((0,), expected)], verbose=False)
    assert right.passed, right.message
    wrong = check_function(lambda s: (np.arange(3.0), 2 * np.ones((2, 2))), [((0,), expected)], verbose=False)
    assert wrong.status == "wrong" and "[1]" in wrong.message
    short = check_function(lambda s: (np.arange(3.0),), [((0,), expected)], verbose=False)
    assert short.status == "wrong" and "2 items" in short.message
