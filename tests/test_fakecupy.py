"""fakecupy, the strict CuPy stand-in: its rules, its counters, its surface, and that it catches the
mistakes that only a GPU would otherwise reveal."""
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

import fakecupy as cp
from fakecupy import cupyx
from minivolo import backend

IMPLICIT = "Implicit conversion to a NumPy array is not allowed"
UNSUPPORTED = "Unsupported type <class 'numpy.ndarray'>"


def _dev(a):
    return cp.asarray(np.asarray(a, dtype=float))


# --- the array is not a NumPy array, and never becomes one implicitly -------------------------------------
def test_array_is_a_wrapper_not_an_ndarray():
    a = _dev([[1, 2], [3, 4]])
    assert not isinstance(a, np.ndarray) and isinstance(a, cp.ndarray)
    assert a.shape == (2, 2) and a.dtype == np.float64 and a.ndim == 2 and a.size == 4


@pytest.mark.parametrize("convert", [np.asarray, np.array, lambda a: a.__array__(), lambda a: np.float64(1) + [a],
                                     lambda a: np.testing.assert_allclose(a, 1.0)],
                         ids=["np.asarray", "np.array", "__array__", "list operand", "assert_allclose"])
def test_implicit_conversion_raises_cupys_type_error(convert):
    with pytest.raises(TypeError, match=IMPLICIT):
        convert(_dev([1.0, 2.0]))


def test_numpy_functions_dispatch_only_where_cupy_has_them():
    a = _dev([1.0, 4.0, 9.0])
    assert isinstance(np.sqrt(a), cp.ndarray) and np.sqrt(a).get().tolist() == [1, 2, 3]
    assert isinstance(np.sum(a), cp.ndarray) and np.sum(a).ndim == 0
    assert isinstance(np.concatenate([a, a]), cp.ndarray)
    for lacking in (np.nanquantile, np.insert, np.unstack):  # NumPy functions CuPy 14 does not have
        assert lacking.__name__ not in dir(cp)
    with pytest.raises(TypeError, match="no implementation found for 'numpy.nanquantile'"):
        np.nanquantile(a, 0.5)


# --- host arrays: refused as operands, accepted only where CuPy accepts them -----------------------------
@pytest.mark.parametrize("host", [np.ones(3), np.array(2.0)], ids=["1-d", "0-d"])
@pytest.mark.parametrize("op", [
    lambda a, h: a + h, lambda a, h: h + a, lambda a, h: a * h, lambda a, h: h < a, lambda a, h: cp.add(a, h),
    lambda a, h: cp.maximum(h, a), lambda a, h: cp.where(a > 0, a, h), lambda a, h: cp.concatenate([a, h]),
    lambda a, h: np.add(h, a), lambda a, h: a.__iadd__(h)],
    ids=["a+h", "h+a", "a*h", "h<a", "cp.add", "cp.maximum", "cp.where", "cp.concatenate", "np.add", "a+=h"])
def test_host_array_operands_raise(op, host):
    with pytest.raises(TypeError, match=UNSUPPORTED):
        op(_dev([1.0, 2.0, 3.0]), host)


def test_host_array_in_place_into_device_raises():
    h = np.ones(3)
    with pytest.raises(TypeError, match=UNSUPPORTED):
        h += _dev([1.0, 2.0, 3.0])


def test_python_and_numpy_scalars_are_accepted():
    a = cp.asarray(np.arange(3, dtype=np.float32))
    for s, dtype in ((2, np.float32), (2.0, np.float32), (np.float32(2), np.float32), (np.int64(2), np.float64),
                     (np.float64(2), np.float64)):  # NEP 50: Python scalars are weak, NumPy scalars are not
        for r in (a * s, s * a, cp.multiply(a, s), cp.maximum(a, s)):
            assert isinstance(r, cp.ndarray) and r.dtype == dtype
    assert (a * 2).get().tolist() == [0, 2, 4]


def test_list_operands_of_ufuncs_raise():
    with pytest.raises(TypeError, match="Unsupported type <class 'list'>"):
        cp.add(_dev([1.0]), [1.0])


def test_host_arrays_where_cupy_accepts_them():
    a = cp.asarray(np.arange(12.0).reshape(3, 4))
    ref = np.arange(12.0).reshape(3, 4)
    np.testing.assert_array_equal(cp.take(a, np.array([2, 0]), axis=1).get(), ref[:, [2, 0]])
    np.testing.assert_array_equal(a.take(np.array([1]), axis=0).get(), ref[[1]])
    np.testing.assert_array_equal(a[np.array([2, 0])].get(), ref[[2, 0]])
    np.testing.assert_array_equal(a[:, [1, 3]].get(), ref[:, [1, 3]])
    assert [p.shape for p in cp.split(a, np.array([1]), axis=0)] == [(1, 4), (2, 4)]
    assert cp.pad(a, np.array([[1, 1], [0, 2]])).shape == (5, 6)
    b = cp.zeros((3, 4))
    b.set(ref)
    np.testing.assert_array_equal(b.get(), ref)


def test_assigning_a_host_array_into_a_device_array_raises():
    a = cp.zeros((2, 3))
    for key in (slice(None), 0, (Ellipsis,), (slice(0, 1), slice(None))):
        with pytest.raises(TypeError, match=UNSUPPORTED):
            a[key] = np.ones(3)
    with pytest.raises(TypeError, match=UNSUPPORTED):
        a[0, 0] = np.array(1.0)  # 0-d too
    a[0] = 5.0
    a[1] = _dev([1, 2, 3])
    assert a.get().tolist() == [[5, 5, 5], [1, 2, 3]]


# --- 0-d results ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("reduce", [lambda a: a.sum(), lambda a: cp.sum(a), lambda a: a.max(), lambda a: a[1, 2],
                                    lambda a: a.mean(), lambda a: cp.linalg.norm(a), lambda a: a[0][1],
                                    lambda a: np.sum(a), lambda a: a.argmax(), lambda a: cp.allclose(a, a)],
                         ids=["sum", "cp.sum", "max", "a[i,j]", "mean", "norm", "a[i][j]", "np.sum", "argmax",
                              "allclose"])
def test_reductions_and_scalar_indexing_return_0d_device_arrays(reduce):
    r = reduce(cp.asarray(np.arange(6.0).reshape(2, 3)))
    assert isinstance(r, cp.ndarray) and r.ndim == 0


# --- counters ------------------------------------------------------------------------------------------
def test_synchronisations_and_copies_are_counted_by_call_site():
    a = _dev([[1.0, -2.0], [3.0, 4.0]])
    with cp.counting() as c:
        b = a * 2 + 1                       # device work: nothing
        s = b.sum()
        s.item(); float(s); int(s); bool(s > 0)   # 4 syncs on one line
        b.get(); cp.asnumpy(b); b.tolist()       # 3 syncs
        b[b > 0]                                 # boolean mask: the size depends on the data
        x = cp.asarray(np.zeros(3))              # a host->device copy
        b[np.array([0, 1])]                      # a host index array is copied too
        cp.asarray(x)                            # already on the device: no copy
    assert (c.syncs, c.copies) == (8, 2), c.report()
    sites = c.by_site("sync")
    line = next(k for k in sites if ".item()" in k).split(":")[1].split(" ")[0]
    assert sum(n for k, n in sites.items() if f":{line} " in k) == 4
    assert all(k.startswith("tests/test_fakecupy.py:") or k.startswith("test_fakecupy.py:") for k in sites), sites
    assert set(c.by_site()) >= {("copy", k) for k in c.by_site("copy")}


def test_counting_blocks_nest_and_count_only_inside():
    a = _dev([1.0])
    a.item()
    with cp.counting() as outer:
        a.item()
        with cp.counting() as inner:
            a.item()
    a.item()
    assert (outer.syncs, inner.syncs) == (2, 1)


def test_site_skips_minivolo_backend(on_fakecupy):
    with cp.counting() as c:
        backend.to_numpy(_dev([1.0]))
    (site,) = c.by_site("sync")
    assert "test_fakecupy.py" in site and "backend.py" not in site


# --- surface -------------------------------------------------------------------------------------------
SURFACE = json.loads(Path(cp.__file__).with_name("surface.json").read_text())


def _public(obj):
    return {n for n in dir(obj) if not n.startswith("_") and type(getattr(obj, n, None)).__name__ != "_Feature"}


@pytest.mark.parametrize("name,module", [("cupy", cp), ("cupy.random", cp.random), ("cupy.linalg", cp.linalg),
                                         ("cupy.lib.stride_tricks", cp.lib.stride_tricks),
                                         ("cupyx.scipy.special", cupyx.scipy.special)])
def test_stand_in_exposes_exactly_the_surface(name, module):
    extra = set(cp.TEST_API) if module is cp else set()
    assert _public(module) - extra == set(SURFACE["modules"][name])


def test_array_and_generator_expose_exactly_the_surface():
    assert _public(cp.ndarray) == set(SURFACE["ndarray"])
    assert _public(cp.random.Generator) == set(SURFACE["random.Generator"])
    assert _public(cp.add) == set(SURFACE["ufunc"])
    rng = cp.random.default_rng(0)
    for missing in ("normal", "permutation", "choice", "shuffle", "bytes"):  # numpy's, not cupy's
        assert hasattr(np.random.default_rng(0), missing) and not hasattr(rng, missing)
    r = rng.random((2, 3), dtype=np.float32)
    assert isinstance(r, cp.ndarray) and r.dtype == np.float32 and r.shape == (2, 3)
    assert rng.integers(0, 5, size=4).dtype == np.int64 and rng.uniform(0, 1, 3, dtype=np.float32).dtype == np.float32


@pytest.mark.parametrize("call,keyword", [
    (lambda a: cp.sum(a, where=a > 0), "where"), (lambda a: a.max(initial=0.0), "initial"),
    (lambda a: cp.exp(a, where=True), "where"), (lambda a: cp.concatenate([a, a], axis=0, foo=1), "foo"),
    (lambda a: cp.random.default_rng(0).random(3, device="cuda"), "device"),
    (lambda a: cupyx.scipy.special.erf(a, where=True), "where")])
def test_keywords_cupy_lacks_raise(call, keyword):
    with pytest.raises(TypeError, match=f"unexpected keyword argument '{keyword}'"):
        call(_dev([1.0, 2.0]))


def test_names_cupy_has_but_the_stand_in_does_not_emulate_fail_loudly():
    with pytest.raises(NotImplementedError, match="cupy.ElementwiseKernel exists in CuPy"):
        cp.ElementwiseKernel("float32 x", "float32 y", "y = x", "copy")


def test_cupyx_erf_matches_scipy():
    from scipy.special import erf
    x = np.linspace(-3, 3, 13)
    np.testing.assert_array_equal(cupyx.scipy.special.erf(cp.asarray(x)).get(), erf(x))


def test_cuda_module_as_minivolo_and_the_benchmarks_use_it():
    assert cp.cuda.is_available() and cp.cuda.Device().id == 0 and cp.cuda.runtime.getDeviceCount() == 1
    start, end = cp.cuda.Event(), cp.cuda.Event()
    start.record()
    with cp.counting() as c:
        end.record()
        end.synchronize()
        cp.cuda.Device().synchronize()
    assert c.syncs == 2 and cp.cuda.get_elapsed_time(start, end) >= 0
    assert cp.get_default_memory_pool().used_bytes() == 0
    with pytest.raises(cp.cuda.runtime.CUDARuntimeError, match="invalid device ordinal"):
        cp.cuda.Device(1).use()


@pytest.mark.skipif(importlib.util.find_spec("cupy") is None, reason="regenerating needs the real cupy installed")
def test_surface_file_matches_the_installed_cupy():
    import cupy

    from fakecupy.make_surface import make_surface
    fresh = make_surface()
    if fresh["cupy_version"] != SURFACE["cupy_version"]:
        pytest.skip(f"installed cupy {cupy.__version__}, surface.json from {SURFACE['cupy_version']}: "
                    "run tests/fakecupy/make_surface.py")
    assert json.loads(json.dumps(fresh)) == SURFACE, "surface.json is stale: run tests/fakecupy/make_surface.py"


# --- acceptance: the stand-in catches what a GPU would --------------------------------------------------
def softmax(x, axis=-1):
    """A copy of minivolo's softmax forward on raw arrays: e = exp(x - max x); e / sum e."""
    xp = backend.get_array_module(x)
    e = xp.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def softmax_asarray(x, axis=-1):
    x = np.asarray(x)  # planted: np.asarray(device array)
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def softmax_host_shift(x, axis=-1):
    xp = backend.get_array_module(x)
    shift = np.max(backend.to_numpy(x), axis=axis, keepdims=True)  # planted: a host array ...
    e = xp.exp(x - shift)                                            # ... in device arithmetic
    return e / e.sum(axis=axis, keepdims=True)


def softmax_missing_function(x, axis=-1):
    xp = backend.get_array_module(x)
    e = xp.exp(x - xp.nanquantile(x, 1.0, axis=axis, keepdims=True))  # planted: NumPy has it, CuPy not
    return e / e.sum(axis=axis, keepdims=True)


def softmax_missing_keyword(x, axis=-1):
    xp = backend.get_array_module(x)
    e = xp.exp(x - x.max(axis=axis, keepdims=True, initial=-np.inf))  # planted: NumPy's keyword only
    return e / e.sum(axis=axis, keepdims=True)


@pytest.mark.parametrize("planted,error,message", [
    (softmax_asarray, TypeError, IMPLICIT),
    (softmax_host_shift, TypeError, UNSUPPORTED),
    (softmax_missing_function, AttributeError, "has no attribute 'nanquantile'"),
    (softmax_missing_keyword, TypeError, "unexpected keyword argument 'initial'")],
    ids=["np.asarray", "host array", "xp function cupy lacks", "keyword cupy lacks"])
def test_stand_in_catches_each_planted_mistake(on_fakecupy, planted, error, message):
    x = np.random.default_rng(0).standard_normal((3, 5)).astype(np.float32)
    np.testing.assert_allclose(planted(x), softmax(x), rtol=1e-6)   # NumPy runs the planted copy fine
    xd = backend.to_device(x, "cuda")
    np.testing.assert_allclose(backend.to_numpy(softmax(xd)), softmax(x), rtol=1e-6)  # the clean copy runs
    with pytest.raises(error, match=message):
        planted(xd)
