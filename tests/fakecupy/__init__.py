"""fakecupy: a strict CuPy stand-in on NumPy, so that minivolo's GPU path runs (and is checked) without a GPU.

    import fakecupy as cupy
    from fakecupy import cupyx
    minivolo.backend.use_cupy(cupy, cupyx)          # what `pytest --fake-gpu` does

What it enforces, as CuPy 14 does:
  - ``fakecupy.ndarray`` wraps a NumPy array but is not one. Implicit conversion to NumPy (``np.asarray(a)``,
    ``__array__``, a NumPy function that CuPy does not implement) raises CuPy's TypeError; NumPy functions
    and ufuncs that CuPy implements dispatch to it (``__array_function__``, ``__array_ufunc__``) and return
    device arrays.
  - A ``numpy.ndarray`` operand (0-d included) in a ufunc, an operator or a cupy function raises
    ``TypeError: Unsupported type <class 'numpy.ndarray'>``. Python and NumPy scalars are accepted. Host
    arrays are accepted only where CuPy accepts them: ``asarray``/``array``, integer (and boolean) index
    arrays, ``take`` indices, ``split`` points, ``pad`` widths, ``ufunc.at`` indices, ``ndarray.set``.
    ``a[...] = numpy_array`` raises.
  - Only the surface of the installed CuPy exists (surface.json, written by make_surface.py): module
    names of cupy, cupy.random, cupy.linalg, cupy.lib.stride_tricks and cupyx.scipy.special, ndarray
    attributes, ufunc attributes, ``random.Generator`` methods, and the keyword arguments of each. A name
    CuPy has but this stand-in does not emulate raises NotImplementedError when used.
  - Reductions and scalar indexing return 0-d device arrays.
  - Device->host synchronisations (``.item()``, ``float()``, ``int()``, ``bool()``, ``.get()``,
    ``.tolist()``, ``asnumpy``, ``repr``, boolean-mask indexing, ``nonzero`` and other data-dependent
    shapes, ``Device().synchronize()``) and host->device copies (``asarray`` of host data, host index
    arrays, ``set``) are counted by call site inside ``with fakecupy.counting() as c:`` (``c.syncs``,
    ``c.copies``, ``c.by_site()``). The call site is the first frame outside fakecupy and
    minivolo/backend.py.

What it cannot emulate: kernels (nothing is compiled; ElementwiseKernel, RawKernel, fuse are stubs),
asynchrony (every call completes before it returns, so a missing synchronisation before a timer or a
host read goes unnoticed, and events time host work), memory limits and out-of-memory errors (the
memory pool reports 0 bytes), several GPUs (one device, id 0), streams (one, the null stream), GPU
rounding (results are NumPy's, bit for bit; cuBLAS, cuDNN and CuPy's own reductions and special
functions round differently), CuPy's own random streams (the generators draw from NumPy's, so seeded
values differ from real CuPy's), and CuPy behaviours that differ from NumPy's beyond the rules above
(e.g. out-of-bounds integer indices wrap around in CuPy but raise here).
"""
import sys as _sys
import types as _types

import numpy as _np

from ._core import (_SURFACE, Counter, _fake, _fake_modules, _memory_pool, _pinned_pool, _populate,  # noqa: F401
                    array, asanyarray, asarray, asnumpy, counting, cuda, get_array_module, ndarray, ufunc)

_this = _sys.modules[__name__]
_populate(_this, "cupy", _np, {
    "asarray": asarray, "asanyarray": asanyarray, "array": array, "asnumpy": asnumpy,
    "get_array_module": get_array_module, "ndarray": ndarray, "ufunc": ufunc, "cuda": cuda,
    "get_default_memory_pool": lambda: _memory_pool,
    "get_default_pinned_memory_pool": lambda: _pinned_pool,
    "random": None, "linalg": None, "lib": None})
_fake.update({name: getattr(_this, name) for name in _SURFACE["modules"]["cupy"]})

linalg = _types.ModuleType("fakecupy.linalg")
_populate(linalg, "cupy.linalg", _np.linalg, {})
lib = _types.ModuleType("fakecupy.lib")
lib.stride_tricks = _types.ModuleType("fakecupy.lib.stride_tricks")
_populate(lib.stride_tricks, "cupy.lib.stride_tricks", _np.lib.stride_tricks, {})

from . import _fakerandom as random  # noqa: E402
from . import cupyx  # noqa: E402

_fake_modules.update({"numpy": _this, "numpy.linalg": linalg, "numpy.random": random,
                      "numpy.lib.stride_tricks": lib.stride_tricks})
# The test API, the only public names that real CuPy lacks.
TEST_API = ("counting", "Counter", "cupyx", "TEST_API")
