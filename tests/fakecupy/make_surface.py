"""Write surface.json: the names, array attributes and keyword arguments that the installed CuPy exposes.

    python tests/fakecupy/make_surface.py            # rewrites tests/fakecupy/surface.json

The stand-in (``fakecupy``) exposes exactly this surface and refuses keyword arguments outside it, so a
minivolo call that real CuPy would reject fails in the tests too. CuPy imports without a GPU, so this
runs anywhere ``pip install cupy-cuda13x`` works; tests/test_fakecupy.py regenerates it and compares.

Parameters come from ``inspect.signature`` where it works (Python functions) and otherwise from the
first line of the docstring (Cython functions and ufuncs write ``name(x, /, out=None, *, dtype=None)``
there). ``params`` is null where neither is readable: such a callable accepts any keyword.
"""
from __future__ import annotations

import inspect
import json
import re
import sys
from pathlib import Path

# Run as a script, this folder is sys.path[0]: drop it, or the fake cupyx/ here would shadow the real one.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]

MODULES = ("cupy", "cupy.random", "cupy.linalg", "cupy.lib.stride_tricks", "cupyx.scipy.special")
SURFACE_PATH = Path(__file__).with_name("surface.json")


def _split_top(text: str) -> list[str]:
    """``text`` split at the commas outside brackets and quotes."""
    parts, depth, quote, cur = [], 0, None, ""
    for ch in text:
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
            continue
        cur += ch
    return parts + [cur] if cur.strip() else parts


def _params_from_doc(obj) -> dict | None:
    """Parameters from a ``name(a, b=1, *, c=None)`` first docstring line, or None."""
    doc = (getattr(obj, "__text_signature__", None) or "").replace("$", "")
    if not doc:
        first = (getattr(obj, "__doc__", None) or "").strip().split("\n", 1)[0]
        match = re.match(r"^[\w.]*\((.*)\)(\s*->.*)?$", first.replace("\\", ""))
        if not match:
            return None
        doc = "(" + match.group(1) + ")"
    names, var_kw = [], False
    for part in _split_top(doc.strip()[1:-1]):
        name = part.split("=", 1)[0].strip().split(" ")[-1]  # "_ndarray_base a=None" -> "a"
        if name in ("", "/", "*", "self") or name.startswith("*") and not name.startswith("**"):
            continue
        if name.startswith("**"):
            var_kw = True
            continue
        if not name.isidentifier():
            return None
        names.append(name)
    return {"params": names, "var_kw": var_kw}


def _params(obj) -> dict | None:
    """Prefer the docstring's signature line for compiled callables and for Python functions that take
    ``**kwargs`` and document their real keywords (einsum); otherwise inspect.signature."""
    from_doc = _params_from_doc(obj)
    if from_doc is not None and not inspect.isfunction(obj):
        return from_doc
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return from_doc
    if from_doc is not None and any(p.kind == p.VAR_KEYWORD for p in sig.parameters.values()):
        return from_doc
    names = [p.name for p in sig.parameters.values()
             if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) and p.name != "self"]
    var_kw = any(p.kind == p.VAR_KEYWORD for p in sig.parameters.values())
    return {"params": names, "var_kw": var_kw}


def _kind(obj, numpy) -> str:
    import cupy

    if isinstance(obj, cupy.ufunc):
        return "ufunc"
    if inspect.ismodule(obj) or type(obj).__name__ == "_LazyModule":
        return "module"
    if isinstance(obj, type):
        return "class"
    if callable(obj):
        return "function"
    return "constant"


def _entry(obj, name: str, numpy) -> dict:
    kind = _kind(obj, numpy)
    entry = {"kind": kind}
    if kind in ("ufunc", "function"):
        entry.update(_params(obj) or {"params": None, "var_kw": True})
    if kind in ("class", "constant", "function") and getattr(numpy, name, object()) is obj:
        entry["numpy"] = True  # the very same object as numpy's (dtypes, exceptions, constants)
    elif kind == "class" and issubclass(obj, BaseException):
        entry["exception"] = obj.__mro__[1].__name__
    elif kind == "constant" and (obj is None or type(obj) in (bool, int, float)):
        entry["value"] = obj
    return entry


def _public(obj) -> list[str]:
    return sorted(n for n in dir(obj) if not n.startswith("_"))


def make_surface() -> dict:
    import importlib

    import cupy
    import numpy

    cupy.random.Generator  # imported lazily by the module's __getattr__: make it part of dir()
    modules = {}
    for modname in MODULES:
        mod = importlib.import_module(modname)
        npmod = {"cupy": numpy, "cupy.random": numpy.random, "cupy.linalg": numpy.linalg,
                 "cupy.lib.stride_tricks": numpy.lib.stride_tricks}.get(modname, None)
        entries = {}
        for name in _public(mod):
            obj = getattr(mod, name)
            if type(obj).__name__ == "_Feature":  # `from __future__ import annotations`
                continue
            if inspect.ismodule(obj) and not obj.__name__.startswith(("cupy", "cupyx")):
                continue  # a module the implementation imported (numpy as np)
            entries[name] = _entry(obj, name, npmod)
        modules[modname] = entries

    def members(cls) -> dict:
        out = {}
        for name in _public(cls):
            attr = inspect.getattr_static(cls, name)
            if callable(attr) and not isinstance(attr, (property, type)) and \
                    type(attr).__name__ != "getset_descriptor":
                out[name] = {"kind": "method", **(_params(getattr(cls, name)) or {"params": None, "var_kw": True})}
            else:
                out[name] = {"kind": "attribute"}
        return out

    return {
        "cupy_version": cupy.__version__,
        "modules": modules,
        "ndarray": members(cupy.ndarray),
        # ufunc objects: their attributes, and the keywords of their methods (reduce, at, ...); a ufunc
        # whose docstring gives no signature accepts UFUNC_CALL_KEYWORDS (ufunc.__call__'s documented ones)
        "ufunc": {name: members(cupy.ufunc)[name] for name in _public(cupy.add)},
        "random.Generator": members(cupy.random.Generator),
    }


def main() -> None:
    SURFACE_PATH.write_text(json.dumps(make_surface(), indent=1, sort_keys=True) + "\n")
    print(f"wrote {SURFACE_PATH}", file=sys.stderr)


if __name__ == "__main__":
    main()
