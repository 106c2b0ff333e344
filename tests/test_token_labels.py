"""minivolo.token_labels: ROI-align against explicit bilinear math, targets that follow the crop and the
flip, the label-map file and its checks, relabel and the `relabel` command (no torch)."""
import dataclasses
import json
import math

import numpy as np
import pytest

from minivolo import Tensor, cli, no_grad
from minivolo.datasets import (ArrayDataset, Compose, MNIST_CLASSES, Normalize, RandomCrop, RandomHorizontalFlip,
                               Resize, write_idx)
from minivolo.models import create_model
from minivolo.token_labels import (crop_boxes, dense_logits, dense_targets, load_label_maps, relabel, roi_align,
                                   save_label_maps)
from minivolo.train import TrainConfig, save_checkpoint


def _softmax(z, axis):
    e = np.exp(z - z.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def _smooth(p, eps):
    return p * (1 - eps) + eps / p.shape[0]


# --- ROI-align -------------------------------------------------------------------------------------
def _bilinear(m, y, x):
    """m (C, h, w) read at (y, x) in cell-index coordinates (cell centres at integers), clamped to the
    map: the textbook four-corner formula."""
    h, w = m.shape[1:]
    y, x = min(max(y, 0.0), h - 1.0), min(max(x, 0.0), w - 1.0)
    y0, x0 = int(math.floor(y)), int(math.floor(x))
    y1, x1 = min(y0 + 1, h - 1), min(x0 + 1, w - 1)
    ly, lx = y - y0, x - x0
    return ((1 - ly) * (1 - lx) * m[:, y0, x0] + (1 - ly) * lx * m[:, y0, x1]
            + ly * (1 - lx) * m[:, y1, x0] + ly * lx * m[:, y1, x1])


def _roi_align_explicit(maps, boxes, out_hw, sr):
    """ROI-align written out: each output bin averages sr x sr bilinear samples at its evenly spaced
    points; a box (x1, y1, x2, y2) in map units, cell k covering [k, k+1) (centre k + 0.5)."""
    B, C = maps.shape[:2]
    ht, wt = out_hw
    out = np.zeros((B, C, ht, wt))
    for b in range(B):
        x1, y1, x2, y2 = boxes[b]
        bh, bw = (y2 - y1) / ht, (x2 - x1) / wt
        for i in range(ht):
            for j in range(wt):
                for iy in range(sr):
                    for ix in range(sr):
                        y = y1 + (i + (iy + 0.5) / sr) * bh - 0.5
                        x = x1 + (j + (ix + 0.5) / sr) * bw - 0.5
                        out[b, :, i, j] += _bilinear(maps[b], y, x) / sr ** 2
    return out


@pytest.mark.parametrize("sr", [1, 2, 3])
def test_roi_align_equals_explicit_bilinear(sr):
    rng = np.random.default_rng(0)
    maps = rng.standard_normal((3, 2, 5, 7))
    boxes = np.array([[0.3, 1.2, 5.9, 4.1],    # inside the map
                      [-0.8, -0.4, 3.0, 2.5],  # across the upper-left border (clamped)
                      [4.0, 2.0, 7.6, 5.3]])   # across the lower-right border
    got = roi_align(maps, boxes, (3, 4), sampling_ratio=sr)
    np.testing.assert_allclose(got, _roi_align_explicit(maps, boxes, (3, 4), sr), rtol=1e-12, atol=1e-12)


def test_roi_align_adaptive_sampling_is_ceil_of_box_over_output():
    rng = np.random.default_rng(1)
    maps = rng.standard_normal((2, 3, 8, 8))
    boxes = np.array([[0.5, 1.0, 6.5, 6.0], [1.5, 2.5, 7.5, 7.5]])  # 6 wide, 5 high: ceil(6/2) = 3, ceil(5/2) = 3
    np.testing.assert_allclose(roi_align(maps, boxes, 2), _roi_align_explicit(maps, boxes, (2, 2), 3),
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("sr", [None, 1, 4])
def test_roi_align_of_a_linear_map_is_its_value_at_the_bin_centre(sr):
    """Bilinear interpolation reproduces a linear function exactly, and so does the bin average:
    ROI-align of f(y, x) = a y + b x + d gives f at each bin's centre (boxes inside the cell centres)."""
    h, w, ht, wt = 6, 9, 4, 3
    a, b, d = np.array([1.5, -2.0]), np.array([0.25, 3.0]), np.array([0.0, 1.0])
    yc, xc = np.arange(h) + 0.5, np.arange(w) + 0.5  # cell centres in map units
    maps = (a[:, None, None] * yc[:, None] + b[:, None, None] * xc + d[:, None, None])[None]  # (1, 2, h, w)
    x1, y1, x2, y2 = 1.1, 0.7, 8.2, 5.4
    got = roi_align(maps, np.array([[x1, y1, x2, y2]]), (ht, wt), sampling_ratio=sr)
    ys = y1 + (np.arange(ht) + 0.5) * (y2 - y1) / ht
    xs = x1 + (np.arange(wt) + 0.5) * (x2 - x1) / wt
    expected = a[:, None, None] * ys[:, None] + b[:, None, None] * xs + d[:, None, None]
    np.testing.assert_allclose(got[0], expected, rtol=1e-12, atol=1e-12)


def test_roi_align_errors():
    with pytest.raises(ValueError, match=r"boxes must be \(B, 4\)"):
        roi_align(np.zeros((1, 1, 4, 4)), np.zeros((1, 3)), 2)
    with pytest.raises(ValueError, match="one box per sample"):
        roi_align(np.zeros((2, 1, 4, 4)), np.zeros((1, 4)), 2)
    with pytest.raises(ValueError, match="sampling_ratio"):
        roi_align(np.zeros((1, 1, 4, 4)), np.zeros((1, 4)), 2, sampling_ratio=0)


# --- dense targets ---------------------------------------------------------------------------------
def _quadrant_maps(C=4, seed=0):
    """(1, C, 8, 8) logits, neither left-right nor up-down symmetric: noise, and class k hot in quadrant
    k (0 upper left, 1 upper right, 2 lower left, 3 lower right)."""
    maps = np.random.default_rng(seed).standard_normal((1, C, 8, 8))
    for k, (rows, cols) in enumerate([(slice(0, 4), slice(0, 4)), (slice(0, 4), slice(4, 8)),
                                      (slice(4, 8), slice(0, 4)), (slice(4, 8), slice(4, 8))]):
        maps[0, k, rows, cols] += 8
    assert not np.allclose(maps, maps[..., ::-1]) and not np.allclose(maps, maps[..., ::-1, :])
    return maps


@pytest.mark.parametrize("corner, top, left", [(0, 0, 0), (1, 0, 16), (2, 16, 0), (3, 16, 16)])
def test_a_crop_lands_in_its_corner_and_a_flip_mirrors_it(corner, top, left):
    """A 16x16 crop of a 32x32 image covers one quarter of the 8x8 map; on a 4x4 token grid each token
    then reads one map cell at its centre, so the token targets are exactly that quarter's softmax."""
    maps, eps = _quadrant_maps(), 0.1
    rows, cols = slice(top // 4, top // 4 + 4), slice(left // 4, left // 4 + 4)
    box = crop_boxes([top], [left], 16)
    t = dense_targets(maps, box, [False], [corner], grid=(4, 4), img_size=32, label_smoothing=eps)
    assert t.shape == (1, 4, 2 + 16)
    tokens = t[0, :, 2:].reshape(4, 4, 4)  # (C, Ht, Wt), the tokens row-major as aux_logits
    assert (tokens.argmax(axis=0) == corner).all()
    np.testing.assert_allclose(tokens, _smooth(_softmax(maps[0][:, rows, cols], axis=0), eps), rtol=1e-12)
    # the class target: the crop ROI-aligned to 1x1 (4x4 samples at the quarter's cell centres)
    np.testing.assert_allclose(t[0, :, 1], _smooth(_softmax(maps[0][:, rows, cols].mean(axis=(1, 2)), 0), eps),
                               rtol=1e-12)
    np.testing.assert_allclose(t[0, :, 0], _smooth(np.eye(4)[corner], eps))
    flipped = dense_targets(maps, box, [True], [corner], grid=(4, 4), img_size=32, label_smoothing=eps)
    np.testing.assert_allclose(flipped[0, :, 2:].reshape(4, 4, 4), tokens[:, :, ::-1], rtol=1e-12)
    np.testing.assert_allclose(flipped[0, :, :2], t[0, :, :2], rtol=1e-12)


def test_targets_follow_random_crop_and_flip():
    """End to end with the training augmentations: when the map is the image itself (one map cell per
    pixel, one token per crop pixel), the token logits must be the augmented image, whatever the crop."""
    B, C, size = 6, 3, 12
    images = np.random.default_rng(2).standard_normal((B, C, 16, 16))
    augment = Compose([RandomCrop(size), RandomHorizontalFlip()])
    augmented = augment(images, np.random.default_rng(3))
    draws = np.random.default_rng(3)  # the same draws, in RandomCrop's then RandomHorizontalFlip's order
    top, left = draws.integers(0, 16 - size + 1, size=B), draws.integers(0, 16 - size + 1, size=B)
    flips = draws.random(B) < 0.5
    assert 0 < flips.sum() < B and len(set(zip(top, left))) > 1  # the test sees both cases and several crops
    t = dense_targets(images, crop_boxes(top, left, size), flips, np.zeros(B, int), grid=size, img_size=16)
    np.testing.assert_allclose(t[:, :, 2:], _softmax(augmented, axis=1).reshape(B, C, -1), rtol=1e-12)


def test_crop_boxes_of_a_padded_crop():
    np.testing.assert_array_equal(crop_boxes([0, 4], [3, 1], (32, 30), padding=2),
                                  [[1, -2, 31, 30], [-1, 2, 29, 34]])


def test_dense_targets_float32_and_errors():
    maps = _quadrant_maps().astype(np.float32)
    t = dense_targets(maps, crop_boxes([2], [1], 30), [True], [0], grid=(3, 5), img_size=32, label_smoothing=0.1)
    assert t.dtype == np.float32 and t.shape == (1, 4, 2 + 15)
    np.testing.assert_allclose(t.sum(axis=1), 1, rtol=1e-6)  # every column a distribution
    for kwargs, match in [(dict(boxes=np.zeros((2, 4))), r"boxes must be \(1, 4\)"),
                          (dict(flips=[True, False]), r"flips must be \(1,\)"),
                          (dict(labels=[[0]]), r"labels must be \(1,\)"),
                          (dict(label_smoothing=1.0), "label_smoothing")]:
        args = dict(maps=maps, boxes=crop_boxes([0], [0], 32), flips=[False], labels=[0], grid=4, img_size=32)
        with pytest.raises(ValueError, match=match):
            dense_targets(**{**args, **kwargs})


# --- the file ----------------------------------------------------------------------------------------
CLASSES = [f"c{i}" for i in range(10)]


def _dataset(n=6, classes=CLASSES, seed=0):
    rng = np.random.default_rng(seed)
    return ArrayDataset(rng.integers(0, 256, (n, 1, 28, 28), dtype=np.uint8), rng.integers(0, len(classes), n),
                        classes)


def _saved(tmp_path, n=6, classes=CLASSES, topk=None):
    ds = _dataset(n, classes)
    logits = (5 * np.random.default_rng(1).standard_normal((n, len(classes), 4, 4))).astype(np.float16)
    path = tmp_path / "labels.npz"
    save_label_maps(path, logits, ds, 32, teacher=dict(model="volo_nano"), command="python -m minivolo relabel x",
                    topk=topk)
    return path, ds, logits


def test_file_round_trip(tmp_path):
    path, ds, logits = _saved(tmp_path)
    maps = load_label_maps(path, ds, img_size=32, grid=4)
    assert (maps.num_images, maps.classes, maps.grid, maps.img_size, maps.topk) == (6, CLASSES, (4, 4), (32, 32), None)
    assert maps.teacher == {"model": "volo_nano"} and maps.command == "python -m minivolo relabel x"
    got = maps.maps([3, 0, 3])
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, logits[[3, 0, 3]].astype(np.float32))
    assert [p.name for p in tmp_path.iterdir()] == ["labels.npz"]  # no temporary file left


def test_top_k_file_keeps_the_top_k_probabilities(tmp_path):
    """Top-k storage: softmax of the rebuilt map gives the teacher's probabilities of the top k classes,
    and the classes outside share the remaining mass evenly."""
    path, ds, logits = _saved(tmp_path, topk=3)
    maps = load_label_maps(path, ds)
    assert maps.topk == 3 and "logits" not in maps.arrays
    p_teacher = _softmax(logits.astype(np.float64), axis=1)
    p = _softmax(maps.maps(np.arange(6), dtype=np.float64), axis=1)
    top = np.argsort(-p_teacher, axis=1)[:, :3]
    np.testing.assert_allclose(np.take_along_axis(p, top, 1), np.take_along_axis(p_teacher, top, 1), rtol=2e-3)
    rest = np.argsort(-p_teacher, axis=1)[:, 3:]
    expected_rest = (1 - np.take_along_axis(p_teacher, top, 1).sum(axis=1, keepdims=True)) / 7
    np.testing.assert_allclose(np.take_along_axis(p, rest, 1), np.broadcast_to(expected_rest, rest.shape),
                               rtol=2e-2, atol=1e-6)


def test_more_than_100_classes_keep_the_top_5(tmp_path):
    path, ds, _ = _saved(tmp_path, n=2, classes=[f"c{i}" for i in range(101)])
    maps = load_label_maps(path, ds)
    assert maps.topk == 5 and maps.arrays["topk_values"].shape == (2, 5, 4, 4)


@pytest.mark.parametrize("change, match", [
    (dict(dataset=_dataset(5)), "made for 6 images, the dataset has 5"),
    (dict(dataset=_dataset(6, seed=9)), "made for other images"),
    (dict(dataset=_dataset(6, classes=MNIST_CLASSES)), r"made for 10 classes \['c0'"),
    (dict(img_size=28), "made at img_size 32x32, expected 28x28"),
    (dict(grid=(8, 8)), "grid 4x4, expected 8x8"),
])
def test_a_file_that_does_not_fit_is_refused(tmp_path, change, match):
    path, ds, _ = _saved(tmp_path)
    kwargs = {"dataset": ds, **change}
    with pytest.raises(ValueError, match=match) as e:
        load_label_maps(path, kwargs.pop("dataset"), **kwargs)
    assert str(path) in str(e.value)


def test_truncated_corrupt_or_inconsistent_files_are_refused(tmp_path):
    path, ds, logits = _saved(tmp_path)
    data = path.read_bytes()
    bad = tmp_path / "truncated.npz"
    bad.write_bytes(data[:len(data) // 2])
    with pytest.raises(ValueError, match=f"{bad}: not a readable label-map file"):
        load_label_maps(bad, ds)
    bad.write_text("not a zip file")
    with pytest.raises(ValueError, match=f"{bad}: not a readable label-map file"):
        load_label_maps(bad, ds)
    meta = json.loads(str(np.load(path)["meta"][()]))
    np.savez(bad, logits=logits[:, :, :3], meta=np.array(json.dumps(meta)))  # arrays disagree with the metadata
    with pytest.raises(ValueError, match=rf"{bad}: entry 'logits' should be float16 \(6, 10, 4, 4\)"):
        load_label_maps(bad, ds)
    nan = logits.copy()
    nan[2, 3, 1, 0] = np.nan
    np.savez(bad, logits=nan, meta=np.array(json.dumps(meta)))
    with pytest.raises(ValueError, match=f"{bad}: entry 'logits' holds non-finite values"):
        load_label_maps(bad, ds)
    np.savez(bad, logits=logits, meta=np.array(json.dumps({**meta, "format": "other"})))
    with pytest.raises(ValueError, match="expected format 'minivolo-label-maps-1'"):
        load_label_maps(bad, ds)
    with pytest.raises(FileNotFoundError, match="no label-map file"):
        load_label_maps(tmp_path / "missing.npz", ds)


# --- relabel -------------------------------------------------------------------------------------------
def _teacher():
    return create_model("volo_nano", num_classes=10, in_chans=1)


def _direct(model, ds, transform):
    """The aux head on every token of forward_features, computed in one batch."""
    x = transform(ds.images.astype(np.float32) / 255)
    with no_grad():
        model.eval()
        tokens = model.forward_features(Tensor(x))[:, 1:]  # (B, 16, D): the class token left out
        return model.aux_head(tokens).numpy().reshape(len(ds), 4, 4, -1).transpose(0, 3, 1, 2)


def test_relabel_aux_is_the_aux_head_on_every_token():
    ds, model = _dataset(10), _teacher()
    transform = Compose([Resize(32), Normalize([0.3], [0.4])])
    out = relabel(model, ds, batch_size=4, transform=transform, maps="aux")  # 3 batches, the last one short
    assert out.shape == (10, 10, 4, 4) and out.dtype == np.float16
    np.testing.assert_allclose(out, _direct(model, ds, transform), rtol=2e-3, atol=2e-3)
    # the same token logits VOLO's inference output takes its max over: model(x) = head(cls) + 0.5 max aux
    x = Tensor(transform(ds.images.astype(np.float32) / 255))
    with no_grad():
        cls = model.head(model.forward_features(x)[:, 0]).numpy()
        np.testing.assert_allclose(model(x).numpy() - cls, 0.5 * out.astype(np.float32).max(axis=(2, 3)),
                                   rtol=2e-3, atol=2e-3)


def test_relabel_output_maps_peak_at_the_teachers_output():
    """maps="output" (the default): head(cls) + 0.5 aux at every token, whose max over the grid, class by
    class, is the teacher's inference output model(x) (float64: to rounding)."""
    ds, model = _dataset(10), _teacher().double()
    transform = Compose([Resize(32), Normalize([0.3], [0.4])])
    to64 = lambda a, rng=None: transform(a).astype(np.float64)  # noqa: E731
    out = relabel(model, ds, batch_size=4, transform=to64)
    x = Tensor(to64(ds.images.astype(np.float64) / 255))
    with no_grad():
        model.eval()
        features = model.forward_features(x)
        direct = model.head(features[:, :1]).numpy() + 0.5 * model.aux_head(features[:, 1:]).numpy()  # (B, 16, C)
        z = dense_logits(model, x).numpy()  # (B, h, w, C), unrounded
        model_out = model(x).numpy()
    np.testing.assert_allclose(z.reshape(10, 16, 10), direct, rtol=0, atol=1e-12)
    np.testing.assert_allclose(out, z.transpose(0, 3, 1, 2), rtol=2e-3, atol=2e-3)  # float16 storage
    np.testing.assert_allclose(z.max(axis=(1, 2)), model_out, rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="maps must be one of"):
        dense_logits(model, x, maps="cls")


def test_relabel_needs_an_aux_head():
    with pytest.raises(ValueError, match="need an aux_head"):
        relabel(create_model("volo_nano", use_aux_head=False), _dataset(2))


def test_relabel_command(tmp_path, capsys):
    ds = _dataset(10, MNIST_CLASSES)
    data_dir = tmp_path / "mnist"
    data_dir.mkdir()
    write_idx(data_dir / "train-images-idx3-ubyte", ds.images[:, 0])
    write_idx(data_dir / "train-labels-idx1-ubyte", ds.labels.astype(np.uint8))
    model = _teacher()
    data = dict(classes=MNIST_CLASSES, in_chans=1, img_size=32, mean=[0.3], std=[0.4])
    config = dataclasses.asdict(TrainConfig(model="volo_nano", dataset="mnist", data_dir=str(data_dir)))
    ckpt = tmp_path / "teacher.npz"
    save_checkpoint(ckpt, dict(epoch=3, config=config, data=data, model=model.state_dict(),
                               metrics=[dict(test_acc=0.5), dict(test_acc=0.75)]))
    out = tmp_path / "labels.npz"
    assert cli.main(["relabel", str(ckpt), "--out", str(out), "--batch-size", "4"]) == 0
    assert "label maps of 10 images, 10 classes on a 4x4 grid" in capsys.readouterr().out
    maps = load_label_maps(out, ds, img_size=32, grid=(4, 4))
    assert maps.teacher == dict(model="volo_nano", checkpoint=str(ckpt), epoch=3, test_acc=0.75, maps="output")
    assert maps.command == f"python -m minivolo relabel {ckpt} --out {out} --batch-size 4"
    x = Tensor(Compose([Resize(32), Normalize([0.3], [0.4])])(ds.images.astype(np.float32) / 255))
    with no_grad():
        expected = dense_logits(model.eval(), x).numpy().transpose(0, 3, 1, 2)  # the default maps: "output"
    np.testing.assert_allclose(maps.maps(np.arange(10)), expected, rtol=2e-3, atol=2e-3)
    aux = tmp_path / "aux.npz"
    assert cli.main(["relabel", str(ckpt), "--out", str(aux), "--batch-size", "4", "--maps", "aux"]) == 0
    expected = _direct(model, ds, Compose([Resize(32), Normalize([0.3], [0.4])]))
    np.testing.assert_allclose(load_label_maps(aux, ds).maps(np.arange(10)), expected, rtol=2e-3, atol=2e-3)
    # a dataset with another number of classes is refused before running the teacher
    assert cli.main(["relabel", str(ckpt), "--out", str(tmp_path / "x.npz"), "--dataset", "imagefolder",
                     "--data-dir", str(tmp_path / "none")]) == 2
    assert "error:" in capsys.readouterr().err and not (tmp_path / "x.npz").exists()


def test_the_bundled_label_maps_fit_the_bundled_subset():
    """data/token-labels: made for the subset's 10,000 training images on volo_tiny's 4x4 grid, <= 10 MB,
    and the teacher's maps name the right class (averaged over the grid) for most images."""
    from pathlib import Path
    from minivolo.datasets import load_dataset
    path = Path(__file__).resolve().parents[1] / "data" / "token-labels" / "fashion-mnist-subset-volo_tiny.npz"
    assert path.stat().st_size <= 10 * 2 ** 20
    train_set = load_dataset("fashion-mnist-subset", train=True)
    maps = load_label_maps(path, train_set, img_size=32, grid=(4, 4))
    assert maps.teacher["maps"] == "output" and maps.topk is None
    z = maps.maps(np.arange(len(train_set))).mean(axis=(2, 3))  # (images, C)
    assert (z.argmax(axis=1) == train_set.labels).mean() > 0.85
