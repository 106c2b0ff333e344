"""Pictures for the course: the autograd graph of a Tensor, drawn with matplotlib (no graphviz).

    graph_layout(t)   the graph behind ``t``: tensor and op nodes with their places, edges parent -> child
    draw_graph(t)     that graph as a matplotlib figure, micrograd style: boxes for tensors, circles for ops

The graph is read from ``Tensor._parents`` and ``Tensor._op``, which ``backward()`` frees as it goes:
draw before calling backward (or call ``backward(retain_graph=True)``, which also puts the leaves'
gradients into the picture).
"""
from __future__ import annotations

from dataclasses import dataclass

from .tensor import Tensor, _topological_order


@dataclass
class Node:
    kind: str    # "tensor" or "op"
    label: str   # the text in the box: name, shape and dtype (value and grad for one element); op name
    x: float     # column: leaves at 0, then op, tensor, op, tensor ... towards the output
    y: float
    role: str = ""   # tensors: "input" (a leaf that requires grad), "constant", "intermediate", "output"


@dataclass
class GraphLayout:
    nodes: list[Node]
    edges: list[tuple[int, int]]   # (from, to) indices into nodes: tensor -> op -> tensor
    freed: bool = False            # the graph was freed by backward(): only the output is left


def _tensor_label(t: Tensor, name: str | None) -> str:
    lines = [name] if name else []
    if t.size == 1:
        lines.append(f"data {t.data.item():.4g}")
        if t.grad is not None:
            lines.append(f"grad {t.grad.data.item():.4g}")
    else:
        lines.append(f"{tuple(t.shape)} {t.dtype}")
        if t.grad is not None:
            lines.append("grad set")
    return "\n".join(lines)


def graph_layout(tensor: Tensor, names: dict | None = None, max_nodes: int = 200) -> GraphLayout:
    """The autograd graph that produced ``tensor``, laid out in columns from the leaves to ``tensor``.

    names: ``{"a": a, "b": b}`` (or ``locals()``: entries that are not Tensors are ignored) labels those
    tensors. A tensor used twice by one op gets one edge. Raises ValueError past ``max_nodes`` tensors.
    """
    if not isinstance(tensor, Tensor):
        raise TypeError(f"graph_layout expects a Tensor, got {type(tensor).__name__}")
    named = {id(v): k for k, v in (names or {}).items() if isinstance(v, Tensor)}
    order = _topological_order(tensor, constants=True)  # every tensor after its parents
    if len(order) > max_nodes:
        raise ValueError(f"the graph has more than max_nodes={max_nodes} tensors; draw_graph is meant "
                         "for small expressions (pass a larger max_nodes to draw it anyway)")

    level = {}  # an op's output: one more than its deepest parent; a leaf: one less than its first user
    users: dict[int, list[int]] = {}
    for t in order:
        parents = getattr(t, "_parents", ())
        level[id(t)] = 1 + max(level[id(p)] for p in parents) if parents else 0
        for p in parents:
            users.setdefault(id(p), []).append(level[id(t)])
    for t in order:
        if not getattr(t, "_parents", ()) and id(t) in users:
            level[id(t)] = min(users[id(t)]) - 1

    nodes: list[Node] = []
    edges: list[tuple[int, int]] = []
    index = {}  # id(tensor) -> its node
    for t in order:
        parents = getattr(t, "_parents", ())
        role = ("output" if t is tensor else "intermediate" if parents
                else "input" if t.requires_grad else "constant")
        if parents:
            op = len(nodes)
            nodes.append(Node("op", getattr(t, "_op", "") or "op", 2 * level[id(t)] - 1, 0.0))
            for p in dict.fromkeys(index[id(p)] for p in parents):  # unique, in order
                edges.append((p, op))
        index[id(t)] = len(nodes)
        nodes.append(Node("tensor", _tensor_label(t, named.get(id(t))), 2 * level[id(t)], 0.0, role))
        if parents:
            edges.append((op, index[id(t)]))

    # rows: a column's nodes sorted by the mean row of their predecessors (one sweep from the left);
    # leaves below them, in the order found
    preds: dict[int, list[int]] = {}
    for a, b in edges:
        preds.setdefault(b, []).append(a)
    for col in sorted({n.x for n in nodes}):
        members = [i for i, n in enumerate(nodes) if n.x == col]
        members.sort(key=lambda i: (0, -sum(nodes[p].y for p in preds[i]) / len(preds[i])) if i in preds
                     else (1, i))
        for rank, i in enumerate(members):
            nodes[i].y = (len(members) - 1) / 2 - rank
    freed = bool(tensor.requires_grad and getattr(tensor, "_backward", None) is not None
                 and not getattr(tensor, "_parents", ()))
    return GraphLayout(nodes, edges, freed)


_COLOURS = {"input": "#cfe2f3", "constant": "#eeeeee", "intermediate": "#ffffff", "output": "#d9ead3"}
_X, _Y = 1.5, 1.1               # data units between columns and rows
_BOX_W, _BOX_H, _OP_R = 1.7, 0.8, 0.42


def draw_graph(tensor: Tensor, ax=None, names: dict | None = None, max_nodes: int = 200):
    """Draw the autograd graph of ``tensor`` (see ``graph_layout``): tensors as boxes (blue: inputs that
    require grad, grey: constants, green: the output), ops as circles, arrows from parent to child.

    ax: a matplotlib Axes to draw into; None makes a new Figure outside pyplot, shown in a notebook
    (with ``%matplotlib inline``) when it is the cell's value, never by accident. Returns that Figure,
    or ``ax`` when one is given.
    Draw before ``backward()``, which frees the graph (or use ``backward(retain_graph=True)``).
    """
    from matplotlib.patches import Circle, FancyArrowPatch, FancyBboxPatch  # on first use: slow to import

    layout = graph_layout(tensor, names, max_nodes)
    xs = [n.x * _X for n in layout.nodes]
    ys = [n.y * _Y for n in layout.nodes]
    width = max(xs) - min(xs) + _BOX_W + 0.4
    height = max(ys) - min(ys) + _BOX_H + 0.6 + (0.8 if layout.freed else 0)
    fig = None
    if ax is None:
        from matplotlib.figure import Figure
        fig = Figure(figsize=(max(3.5, 0.85 * width), max(1.5, 0.85 * height)))
        ax = fig.subplots()
        fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=0.99)
    patches = []
    for n, x, y in zip(layout.nodes, xs, ys):
        if n.kind == "op":
            patch = Circle((x, y), _OP_R, facecolor="#fff2cc", edgecolor="black", lw=1, gid="op")
            ax.text(x, y, n.label, ha="center", va="center", fontsize=9 if len(n.label) <= 5 else 7, zorder=4)
        else:
            patch = FancyBboxPatch((x - _BOX_W / 2, y - _BOX_H / 2), _BOX_W, _BOX_H, boxstyle="round,pad=0.02",
                                   facecolor=_COLOURS[n.role], edgecolor="black", lw=1, gid="tensor")
            ax.text(x, y, n.label, ha="center", va="center", fontsize=8, family="monospace", zorder=4)
        patch.set_zorder(3)
        ax.add_patch(patch)
        patches.append(patch)
    for a, b in layout.edges:
        long = layout.nodes[b].x - layout.nodes[a].x > 1  # bend it over the nodes it would cross
        ax.add_patch(FancyArrowPatch((xs[a], ys[a]), (xs[b], ys[b]), patchA=patches[a], patchB=patches[b],
                                     arrowstyle="-|>", mutation_scale=10, lw=1, color="#444444", zorder=2,
                                     connectionstyle=f"arc3,rad={-0.35 if long else 0}", clip_on=False,
                                     gid="edge"))
    bottom = min(ys) - _BOX_H / 2 - 0.3
    if layout.freed:
        ax.text(xs[-1], bottom, "the graph was freed by backward(): draw before\nbackward(), or use "
                "backward(retain_graph=True)", ha="center", va="top", fontsize=8)
        bottom -= 0.8
    ax.set_xlim(min(xs) - _BOX_W / 2 - 0.2, max(xs) + _BOX_W / 2 + 0.2)
    ax.set_ylim(bottom, max(ys) + _BOX_H / 2 + 0.3)
    ax.set_aspect("equal")
    ax.axis("off")
    return fig if fig is not None else ax
