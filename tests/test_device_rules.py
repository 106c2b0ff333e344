"""The GPU path under CuPy's rules (on the stand-in, in either test mode): host data joins the device of
the op, tensors on different devices are a clear error, constants are built on the device once, and a
training step neither waits on the device nor copies more than its batch."""
import numpy as np
import pytest

import minivolo as mv
from runs import assert_same_weights, cut_in_second_epoch, per_iteration
from minivolo import functional as F


def randn(*shape, seed=0, dtype=np.float32):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def on(device, array, requires_grad=False):
    return mv.Tensor(array, requires_grad=requires_grad, device=device)


# --- host data joins the device -----------------------------------------------------------------------
def test_where_with_a_host_condition_and_device_tensors(on_fakecupy):
    cond = np.array([[True, False, True]])
    results = {}
    for device in ("cpu", "cuda"):
        x, y = on(device, np.arange(3.0), True), on(device, np.arange(3.0) + 10, True)
        out = mv.where(cond, x, y)
        assert out.device == device
        (out * on(device, np.array([[1.0, 2.0, 3.0]]))).sum().backward()
        results[device] = out.numpy(), x.grad.numpy(), y.grad.numpy()
    np.testing.assert_array_equal(results["cuda"][0], [[0, 11, 2]])
    for got, want in zip(results["cuda"], results["cpu"]):
        np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(results["cuda"][1], [1, 0, 3])


@pytest.mark.parametrize("training", [True, False], ids=["training", "eval"])
def test_batch_norm_with_host_running_statistics_and_a_device_input(on_fakecupy, training):
    x, w, b = randn(4, 3, 5, 5), randn(3, seed=1), randn(3, seed=2)
    stats = {d: (randn(3, seed=3), np.abs(randn(3, seed=4)) + 0.5) for d in ("cpu", "cuda")}
    out = {d: F.batch_norm(on(d, x), *stats[d], on(d, w), on(d, b), training, 0.2) for d in ("cpu", "cuda")}
    assert out["cuda"].device == "cuda" and isinstance(stats["cuda"][0], np.ndarray)
    np.testing.assert_allclose(out["cuda"].numpy(), out["cpu"].numpy(), rtol=1e-6, atol=1e-6)
    for got, want in zip(stats["cuda"], stats["cpu"]):  # the host arrays were updated in place
        np.testing.assert_allclose(got, want, rtol=1e-6)
    if training:
        assert not np.array_equal(stats["cuda"][0], randn(3, seed=3))


def test_tensor_from_a_list_of_0d_device_arrays(on_fakecupy):
    losses = [on("cuda", np.array([1.5, 2.5])).sum().data, on("cuda", np.array([4.0])).sum().data]
    with on_fakecupy.counting() as c:
        t = mv.Tensor(losses)
    assert t.device == "cuda" and t.shape == (2,) and c.syncs == 0, c.report()
    np.testing.assert_array_equal(t.numpy(), [4.0, 4.0])
    assert mv.tensor(losses).device == "cuda"


@pytest.mark.parametrize("name,join", [("cat", mv.cat), ("stack", mv.stack)], ids=["cat", "stack"])
def test_joining_tensors_on_different_devices_is_a_clear_error(on_fakecupy, name, join):
    a, b = on("cuda", np.ones(2)), on("cpu", np.ones(2))
    with pytest.raises(RuntimeError, match=rf"{name}: expected all tensors on the same device, but found "
                                           r"at least two devices, cuda \(tensor 0\) and cpu \(tensor 1\)"):
        join([a, b])
    with pytest.raises(RuntimeError, match=r"cpu \(tensor 0\) and cuda \(tensor 2\)"):
        join([b, b, a])
    assert join([a, a]).device == "cuda"


def test_python_numbers_in_arithmetic_make_no_host_arrays(on_fakecupy):
    results = {}
    for device in ("cpu", "cuda"):
        x = on(device, randn(3, 4), requires_grad=True)
        with on_fakecupy.counting() as c:
            y = 2 * ((x * 0.5 + 1) - 2) / 3
            y = 1 - y ** 2 + mv.maximum(y, 0.0) - mv.where(x.data > 0, y, 0.0)
            y.sum().backward()
        assert (c.copies, c.syncs) == (0, 0), c.report()
        assert y.dtype == np.float32 and y.device == device
        results[device] = y.numpy(), x.grad.numpy()
    for got, want in zip(results["cuda"], results["cpu"]):
        np.testing.assert_allclose(got, want, rtol=1e-6)


CONSTANT_OPS = {  # ops whose constants (divisors, indices, matrices) depend only on the shapes
    "avg_pool2d divisor": lambda x: F.avg_pool2d(x, 3, 2, padding=1, count_include_pad=False),
    "pad indices": lambda x: F.pad(x, (1, 2, 2, 1), mode="reflect"),
    "interpolate matrices": lambda x: F.interpolate(x, size=(5, 11), mode="bilinear", align_corners=False),
}


@pytest.mark.parametrize("name", list(CONSTANT_OPS))
def test_constants_are_built_on_the_device_once(on_fakecupy, name):
    op = CONSTANT_OPS[name]
    results = {}
    for device in ("cpu", "cuda"):
        x = on(device, randn(2, 3, 8, 8), requires_grad=True)
        op(x).sum().backward()  # the first call may build them
        x.grad = None
        with on_fakecupy.counting() as c:
            out = op(x)
            out.sum().backward()
        assert (c.copies, c.syncs) == (0, 0), c.report()
        results[device] = out.numpy(), x.grad.numpy()
    for got, want in zip(results["cuda"], results["cpu"]):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_mix_token_mask_is_built_on_the_device(on_fakecupy):
    from minivolo.models import create_model

    x = randn(2, 1, 32, 32)
    results = {}
    for device in ("cpu", "cuda"):
        mv.manual_seed(0)
        model = create_model("volo_tiny", num_classes=10, in_chans=1, use_mix_token=True).to(device).train()
        xt = on(device, x)
        model(xt)  # warm-up: constants of the other ops
        with on_fakecupy.counting() as c:
            cls, aux, bbox = model.forward_train(xt, bbox=(1, 2, 3, 4))
        assert (c.copies, c.syncs) == (0, 0), c.report()
        results[device] = cls.numpy(), aux.numpy()
    for got, want in zip(results["cuda"], results["cpu"]):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_cross_entropy_target_out_of_range_on_the_device_is_nan_without_waiting(on_fakecupy):
    logits = randn(4, 3)
    with pytest.raises(ValueError, match=r"target values must be in \[0, 3\)"):
        F.cross_entropy(on("cpu", logits), np.array([0, 1, 3, 2]))
    x = on("cuda", logits, requires_grad=True)
    target = on("cuda", np.array([0, 1, 3, 2]))
    with on_fakecupy.counting() as c:
        loss = F.cross_entropy(x, target)
        loss.backward()
    assert c.syncs == 0 and np.isnan(loss.item()) and np.isnan(x.grad.numpy()).all()
    good = F.cross_entropy(on("cuda", logits), on("cuda", np.array([0, 1, 2, 2])))
    np.testing.assert_allclose(good.item(), F.cross_entropy(on("cpu", logits), np.array([0, 1, 2, 2])).item(),
                               rtol=1e-6)


@pytest.mark.parametrize("progress", [False, True], ids=["quiet", "progress bar"])
def test_a_training_iteration_waits_on_the_device_at_most_twice_and_copies_only_its_batch(on_fakecupy, tmp_path,
                                                                                          progress):
    """volo_tiny, the default augmentation (random crop + flip), AdamW: the cost of an iteration is the
    difference between a run of 4 iterations and a run of 1 (everything else is the same in both). Budget:
    2 synchronisations, 2 copies (the images and the labels). The progress bar reads the running loss at
    most once per refresh."""
    from minivolo import train as T

    def run(name, iterations):
        T.train(out=str(tmp_path), name=name, model="volo_tiny", epochs=1, batch_size=4, max_train=4 * iterations,
                max_test=4, eval_batch_size=4, device="cuda", progress=progress)

    syncs, copies, report = per_iteration(on_fakecupy, run)
    assert syncs <= 2 and copies <= 2, f"per iteration: {syncs} syncs, {copies} copies\n{report}"


@pytest.mark.parametrize("mode", ["mix_token+token_labels", "distill"])
def test_a_token_labeling_iteration_waits_at_most_twice_and_copies_its_batch_and_label_maps(on_fakecupy, tmp_path,
                                                                                            mode):
    """MixToken and token labels, or distillation (targets from the crops' boxes and flips, drawn on the
    device): the same 2 synchronisations, and one more copy, the batch's label maps (host -> device)."""
    from minivolo import train as T
    from minivolo.datasets import load_dataset
    from minivolo.token_labels import save_label_maps

    ds = load_dataset(train=True)
    labels = tmp_path / "labels.npz"
    save_label_maps(labels, np.zeros((len(ds), len(ds.classes), 4, 4), np.float16), ds, 32)

    def run(name, iterations):
        T.train(out=str(tmp_path), name=name, model="volo_tiny", epochs=1, batch_size=4, max_train=4 * iterations,
                max_test=4, eval_batch_size=4, device="cuda", progress=False,
                **(dict(distill=str(labels)) if mode == "distill" else dict(mix_token=True, token_labels=str(labels))))

    syncs, copies, report = per_iteration(on_fakecupy, run)
    assert syncs <= 2 and copies <= 3, f"per iteration: {syncs} syncs, {copies} copies\n{report}"


@pytest.mark.parametrize("first,then", [("cuda", "cpu"), ("cpu", "cuda")], ids=["cuda->cpu", "cpu->cuda"])
def test_a_run_saved_on_one_device_resumes_on_the_other(on_fakecupy, tmp_path, monkeypatch, first, then):
    """On the stand-in the numbers are NumPy's on both devices, so the resumed run must equal an
    uninterrupted one bit for bit: the checkpoint carries everything across devices. The host's chunked
    float32 kernels (gelu, layer_norm, softmax, batch_norm, conv2d) round differently from the whole-array
    ones a device runs: the host runs the whole-array references here too."""
    from minivolo import train as T
    from minivolo.functional import conv, nn as ops

    for impl in ("GELU_IMPL", "LAYER_NORM_IMPL", "SOFTMAX_IMPL", "BATCH_NORM_IMPL"):
        monkeypatch.setattr(ops, impl, "reference")
    monkeypatch.setattr(conv, "CONV2D_IMPL", "im2col")

    quick = dict(model="volo_nano", epochs=2, batch_size=16, lr=3e-3, warmup_epochs=0.5, drop_path=0.1,
                 max_train=32, max_test=16, progress=False)
    full = T.train(out=str(tmp_path), name="full", device=then, **quick)
    cut_in_second_epoch(T, monkeypatch, out=str(tmp_path), name="cut", device=first, **quick)
    resumed = T.train(resume=tmp_path / "cut", device=then, progress=False)
    assert next(resumed["model"].parameters()).device == then
    strip = [{k: v for k, v in m.items() if k != "seconds"} for m in full["metrics"]]
    assert [{k: v for k, v in m.items() if k != "seconds"} for m in resumed["metrics"]] == strip
    assert_same_weights(T.load_checkpoint(tmp_path / "full"), T.load_checkpoint(tmp_path / "cut"), optimizer=False)


@pytest.mark.parametrize("op", [lambda a, b: a + b, lambda a, b: a * b, lambda a, b: a @ b,
                                lambda a, b: mv.where(np.array([True, False]), a, b)],
                         ids=["add", "mul", "matmul", "where"])
def test_arithmetic_on_different_devices_is_a_clear_error(on_fakecupy, op):
    a, b = on("cuda", np.ones(2)), on("cpu", np.ones(2))
    with pytest.raises(RuntimeError, match=r"expected all tensors on the same device, but found at least two "
                                           r"devices, cuda \(tensor 0\) and cpu \(tensor 1\)"):
        op(a, b)


def test_clip_grad_norm_does_not_wait_for_the_device(on_fakecupy):
    """It returns the norm as a 0-d device Tensor (as torch), so a step with --clip-grad never syncs."""
    from minivolo.optim import clip_grad_norm_
    grads = [randn(4, 3), randn(5)]
    results = {}
    for device in ("cpu", "cuda"):
        params = [mv.nn.Parameter(np.zeros(g.shape, np.float32)).to(device) for g in grads]
        for p, g in zip(params, grads):
            p.grad = on(device, g)
        with on_fakecupy.counting() as c:
            total = clip_grad_norm_(params, 0.5)
        assert (c.copies, c.syncs) == (0, 0), c.report()
        assert total.device == device and total.shape == ()
        results[device] = total.item(), [p.grad.numpy() for p in params]
    expected = np.sqrt(sum((g.astype(np.float64) ** 2).sum() for g in grads))
    np.testing.assert_allclose(results["cuda"][0], expected, rtol=1e-6)
    np.testing.assert_allclose(results["cpu"][0], expected, rtol=1e-6)
    for got, want in zip(results["cuda"][1], results["cpu"][1]):
        np.testing.assert_allclose(got, want, rtol=1e-6)
