"""The VOLO training recipe wired into training: the augmentation parameters the loader records, the targets
the trainer builds from them, each mode's training (mix-token, token labels, distillation), the refusals
of bad combinations and of label files that do not fit, bit-for-bit resume, and the CLI flags (no torch)."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from minivolo import backend
from minivolo import train as T
from minivolo.datasets import (ArrayDataset, Compose, DataLoader, Normalize, RandomCrop, RandomHorizontalFlip,
                               Resize, load_dataset)
from minivolo.token_labels import dense_targets, save_label_maps
from runs import assert_same_weights, cut_in_second_epoch

ROOT = Path(__file__).resolve().parent.parent
QUICK = dict(model="volo_nano", batch_size=32, lr=3e-3, warmup_epochs=0.5, max_train=128, max_test=64,
             progress=False)


def _images(n=10, size=28, seed=0):
    rng = np.random.default_rng(seed)
    return ArrayDataset(rng.integers(0, 256, (n, 1, size, size), dtype=np.uint8), rng.integers(0, 3, n),
                        ["a", "b", "c"])


def _augment():
    return Compose([Resize(32), RandomCrop(32, padding=2), RandomHorizontalFlip()])


def _host(a):
    return backend.to_numpy(a)


# --- what the loader records ---------------------------------------------------------------------------
def test_recorded_boxes_and_flips_reproduce_the_batch():
    """Resize each sample, cut the recorded box out of it (zeros outside the image), mirror it where
    recorded: that is x, exactly; and x is the batch of the loader without return_params."""
    ds = _images()
    device = backend.default_device()
    plain = DataLoader(ds, 4, shuffle=True, seed=3, transform=_augment(), device=device)
    loader = DataLoader(ds, 4, shuffle=True, seed=3, transform=_augment(), device=device, return_params=True)
    seen_flip = set()
    for (x0, y0), (x, y, params) in zip(plain, loader):
        x, idx = _host(x), params["indices"]
        boxes, flips = _host(params["boxes"]), _host(params["flips"])
        assert isinstance(idx, np.ndarray) and idx.dtype == np.int64 and boxes.dtype == np.float64
        assert flips.dtype == bool and boxes.shape == (len(idx), 4)
        np.testing.assert_array_equal(x, _host(x0))
        np.testing.assert_array_equal(_host(y), ds.labels[idx])
        resized = Resize(32)(ds.images[idx].astype(np.float32) * np.float32(1 / 255))  # (B, 1, 32, 32)
        for b, (x1, y1, x2, y2) in enumerate(boxes.astype(int)):
            assert (x2 - x1, y2 - y1) == (32, 32) and -2 <= x1 <= 2 and -2 <= y1 <= 2
            crop = np.zeros((1, 32, 32), np.float32)
            rows, cols = slice(max(y1, 0), min(y2, 32)), slice(max(x1, 0), min(x2, 32))
            crop[:, rows.start - y1:rows.stop - y1, cols.start - x1:cols.stop - x1] = resized[b][:, rows, cols]
            np.testing.assert_array_equal(x[b], crop[..., ::-1] if flips[b] else crop)
            seen_flip.add(bool(flips[b]))
    assert seen_flip == {True, False}


def test_without_augmentation_the_box_is_the_whole_image_and_nothing_is_flipped():
    ds = _images(n=5)
    loader = DataLoader(ds, 5, transform=Compose([Resize(32), Normalize([0.5], [0.2])]), return_params=True,
                        device=backend.default_device())
    x, y, params = next(iter(loader))
    np.testing.assert_array_equal(params["indices"], np.arange(5))
    np.testing.assert_array_equal(_host(params["boxes"]), np.tile([0.0, 0.0, 32.0, 32.0], (5, 1)))
    assert not _host(params["flips"]).any()


def test_same_seed_and_epoch_give_the_same_params_and_ranks_slice_them():
    ds = _images(n=16)
    make = dict(shuffle=True, seed=5, transform=_augment(), device=backend.default_device(), return_params=True,
                drop_last=True)
    a, b = DataLoader(ds, 8, **make), DataLoader(ds, 8, **make)
    a.set_epoch(2), b.set_epoch(2)
    first, again = list(a), list(b)
    other = list(b)  # epoch 3
    for (_, _, p), (_, _, q), (_, _, r) in zip(first, again, other):
        for key in ("indices", "boxes", "flips"):
            np.testing.assert_array_equal(_host(p[key]), _host(q[key]))
    assert any(not np.array_equal(_host(p["boxes"]), _host(r["boxes"])) for (_, _, p), (_, _, r) in zip(first, other))
    # two data-parallel ranks of batch 4 hold rows r::2 of the single process's batch of 8
    ranks = [DataLoader(ds, 4, num_replicas=2, rank=r, **make) for r in (0, 1)]
    for r, loader in enumerate(ranks):
        loader.set_epoch(2)
        for (xs, _, p), (x, _, q) in zip(first, loader):
            np.testing.assert_array_equal(_host(x), _host(xs)[r::2])
            for key in ("indices", "boxes", "flips"):
                np.testing.assert_array_equal(_host(q[key]), _host(p[key])[r::2])


# --- label files for the bundled subset -------------------------------------------------------------------
def _maps_for(ds, grid=(4, 4), classes=None, seed=0):
    """Logits that favour each image's label, plus a pattern that is neither left-right nor up-down
    symmetric and differs between classes (so a wrong crop, flip or axis order changes the targets)."""
    h, w = grid
    rng = np.random.default_rng(seed)
    ramp = (np.arange(h)[:, None] - 2.0 * np.arange(w)) / max(h, w)  # (h, w)
    pattern = ramp * (np.arange(10) % 3 - 1)[:, None, None]  # (C, h, w)
    onehot = np.arange(10)[None, :, None, None] == ds.labels[:, None, None, None]
    logits = 3.0 * onehot + pattern + 0.3 * rng.standard_normal((len(ds), 10, h, w))
    return logits.astype(np.float16)


@pytest.fixture(scope="module")
def subset():
    return load_dataset(train=True)


@pytest.fixture(scope="module")
def label_file(tmp_path_factory, subset):
    path = tmp_path_factory.mktemp("labels") / "labels.npz"
    save_label_maps(path, _maps_for(subset), subset, 32, teacher=dict(model="fake"), command="test")
    return path


# --- the targets the trainer builds ----------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["token_labels", "distill"])
def test_the_step_targets_are_dense_targets_of_the_recorded_params(label_file, subset, tmp_path, monkeypatch, mode):
    """Record each step's params and the target the loss receives; recompute the target from the file with
    dense_targets on host boxes (adaptive sampling): they must agree."""
    steps, targets = [], []
    real_loss = T._loss

    def recording_loss(model, x, y, config, params=None, label_maps=None):
        steps.append((_host(y), {k: _host(v) for k, v in params.items()}))
        return real_loss(model, x, y, config, params, label_maps)

    class Recording(T.TokenLabelCrossEntropy):
        def forward(self, output, target):
            targets.append(_host(target))
            return super().forward(output, target)

    real_soft_ce = T.soft_target_cross_entropy

    def recording_soft_ce(logits, target):
        targets.append(target.numpy())
        return real_soft_ce(logits, target)

    monkeypatch.setattr(T, "_loss", recording_loss)
    monkeypatch.setattr(T, "TokenLabelCrossEntropy", Recording)
    monkeypatch.setattr(T, "soft_target_cross_entropy", recording_soft_ce)
    T.train(out=str(tmp_path), name=mode, epochs=1, **{**QUICK, "max_train": 64, mode: str(label_file)})
    assert len(steps) == len(targets) == 2
    logits = np.load(label_file)["logits"].astype(np.float32)
    for (y, params), got in zip(steps, targets):
        np.testing.assert_array_equal(y, subset.labels[params["indices"]])
        want = dense_targets(logits[params["indices"]], params["boxes"], params["flips"], y, (4, 4), 32,
                             label_smoothing=0.1)
        if mode == "distill":
            want = want[:, :, 1]
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
        assert params["flips"].any() and not params["flips"].all()


# --- each mode trains ----------------------------------------------------------------------------------------
MODES = {"mix_token": dict(mix_token=True), "token_labels": dict(token_labels=True),
         "mix_token+token_labels": dict(mix_token=True, token_labels=True), "distill": dict(distill=True)}


def _mode(mode, label_file):
    return {k: (str(label_file) if v is True and k != "mix_token" else v) for k, v in MODES[mode].items()}


@pytest.mark.parametrize("mode", list(MODES))
def test_each_mode_trains(label_file, tmp_path, mode):
    r = T.train(out=str(tmp_path), name=mode, epochs=3, **QUICK, **_mode(mode, label_file))
    losses = [m["train_loss"] for m in r["metrics"]]
    assert np.isfinite(losses).all() and losses[-1] < losses[0], losses
    config = json.loads((r["run_dir"] / "config.json").read_text())
    assert {k: config[k] for k in _mode(mode, label_file)} == _mode(mode, label_file)


def test_mix_token_alone_uses_image_labels_for_every_token(tmp_path, monkeypatch):
    """Without label maps the loss gets the smoothed one-hot labels (B, C) (taken by every token), the
    configured dense_weight, and the boxes the model drew."""
    labels, calls = [], []
    real_loss = T._loss

    def recording_loss(model, x, y, config, params=None, label_maps=None):
        assert params is None and label_maps is None
        labels.append(_host(y))
        return real_loss(model, x, y, config, params, label_maps)

    class Recording(T.TokenLabelCrossEntropy):
        def forward(self, output, target):
            calls.append((_host(target), output[2], self.dense_weight, self.cls_weight))
            return super().forward(output, target)

    monkeypatch.setattr(T, "_loss", recording_loss)
    monkeypatch.setattr(T, "TokenLabelCrossEntropy", Recording)
    T.train(out=str(tmp_path), name="mix", epochs=1, mix_token=True, dense_weight=0.25, **{**QUICK, "max_train": 96})
    eps, C = 0.1, 10
    assert len(calls) == len(labels) == 3
    assert any(bbox != (0, 0, 0, 0) for _, bbox, _, _ in calls)  # the model mixed
    for y, (target, bbox, dense_weight, cls_weight) in zip(labels, calls):
        assert (dense_weight, cls_weight) == (0.25, 1.0)
        np.testing.assert_allclose(target, (np.arange(C) == y[:, None]) * (1 - eps) + eps / C, rtol=1e-6)


# --- refusals ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("other", [dict(mix_token=True), dict(token_labels="x.npz")], ids=["mix_token", "token_labels"])
def test_distill_does_not_combine(tmp_path, other):
    name = next(iter(other))
    with pytest.raises(ValueError, match=f"distill and {name} do not combine"):
        T.train(out=str(tmp_path), name="bad", epochs=1, distill="x.npz", **QUICK, **other)
    assert not (tmp_path / "bad").exists()


def test_negative_dense_weight_is_refused(tmp_path):
    with pytest.raises(ValueError, match="dense_weight must be >= 0, got -1"):
        T.train(out=str(tmp_path), name="bad", epochs=1, mix_token=True, dense_weight=-1.0, **QUICK)


def _bad_file(kind, tmp_path, subset, label_file):
    path = tmp_path / f"{kind}.npz"
    if kind == "count":
        small = ArrayDataset(subset.images[:100], subset.labels[:100], subset.classes)
        save_label_maps(path, _maps_for(small), small, 32)
        return path, "made for 100 images, the dataset has 10000"
    if kind == "classes":
        renamed = ArrayDataset(subset.images, subset.labels, [f"k{i}" for i in range(10)])
        save_label_maps(path, _maps_for(subset), renamed, 32)
        return path, "made for 10 classes ['k0'"
    if kind == "grid":
        save_label_maps(path, _maps_for(subset, grid=(8, 8)), subset, 32)
        return path, "grid 8x8, expected 4x4"
    if kind == "img_size":
        save_label_maps(path, _maps_for(subset), subset, 28)
        return path, "made at img_size 28x28, expected 32x32"
    data = label_file.read_bytes()
    path.write_bytes(data[:len(data) // 2])
    return path, "not a readable label-map file"


@pytest.mark.parametrize("flag,kind", [(flag, kind) for flag in ("token_labels", "distill")
                                       for kind in ("count", "classes", "grid", "img_size", "truncated")
                                       if (flag, kind) != ("distill", "grid")])  # see test_distill_accepts_any_grid
def test_label_files_that_do_not_fit_are_refused_before_training(subset, label_file, tmp_path, monkeypatch, flag,
                                                                kind):
    path, message = _bad_file(kind, tmp_path, subset, label_file)
    monkeypatch.setattr(T, "train_one_epoch", lambda *a, **k: pytest.fail("training started"))
    with pytest.raises(ValueError, match=re.escape(str(path)) + ".*" + re.escape(message)):
        T.train(out=str(tmp_path / "runs"), name="bad", epochs=1, **{**QUICK, flag: str(path)})
    assert not (tmp_path / "runs").exists()


def test_distill_accepts_any_grid(subset, label_file, tmp_path):
    """Distillation resamples the teacher's map over the crop to 1x1: the grid does not matter."""
    path, _ = _bad_file("grid", tmp_path, subset, label_file)
    r = T.train(out=str(tmp_path), name="fine", epochs=1, **{**QUICK, "max_train": 64, "distill": str(path)})
    assert np.isfinite(r["metrics"][0]["train_loss"])


def test_mix_token_needs_an_aux_head_and_a_class_token():
    with pytest.raises(ValueError, match="model 'volo_tiny' needs an aux head and a class token"):
        T._load_label_maps(T.TrainConfig(mix_token=True).validate(), object(), None, 32)


# --- resume ------------------------------------------------------------------------------------------------------
def test_resume_with_mix_token_and_token_labels_is_bit_for_bit(label_file, tmp_path, monkeypatch):
    quick = dict(QUICK, max_train=256, epochs=2, drop_path=0.1, mix_token=True, token_labels=str(label_file))
    full = T.train(out=str(tmp_path), name="full", **quick)
    cut_in_second_epoch(T, monkeypatch, out=str(tmp_path), name="cut", **quick)
    # the resumed run checks the label file again: a file replaced in between is refused
    saved = label_file.read_bytes()
    try:
        label_file.write_bytes(saved[:100])
        with pytest.raises(ValueError, match=re.escape(str(label_file))):
            T.train(resume=tmp_path / "cut", progress=False)
    finally:
        label_file.write_bytes(saved)
    resumed = T.train(resume=tmp_path / "cut", progress=False)
    strip = [{k: v for k, v in m.items() if k != "seconds"} for m in full["metrics"]]
    assert [{k: v for k, v in m.items() if k != "seconds"} for m in resumed["metrics"]] == strip
    assert_same_weights(T.load_checkpoint(tmp_path / "full"), T.load_checkpoint(tmp_path / "cut"))


# --- the command line ------------------------------------------------------------------------------------------
def _cli(*args, cwd=ROOT):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "minivolo", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


def test_cli_trains_with_mix_token_and_token_labels(label_file, tmp_path):
    r = _cli("train", "--model", "volo_nano", "--mix-token", "--token-labels", label_file, "--dense-weight", "0.25",
             "--max-train", "128", "--max-test", "64", "--epochs", "1", "--batch-size", "32", "--quiet",
             "--out", tmp_path, "--name", "cli")
    assert r.returncode == 0, r.stderr
    config = json.loads((tmp_path / "cli" / "config.json").read_text())
    assert (config["mix_token"], config["token_labels"], config["dense_weight"]) == (True, str(label_file), 0.25)
    assert (config["distill"], T.TrainConfig().mix_token, T.TrainConfig().token_labels) == (None, False, None)


def test_cli_refuses_distill_with_mix_token(tmp_path):
    r = _cli("train", "--distill", "x.npz", "--mix-token", "--quiet", cwd=tmp_path)
    assert r.returncode == 2 and "error: distill and mix_token do not combine" in r.stderr
    assert "Traceback" not in r.stderr
