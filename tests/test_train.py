"""The training loop end to end: outputs, bit-for-bit resume, checkpoint safety, evaluate/predict, CLI."""
import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from minivolo import train as T
from runs import assert_same_weights, cut_in_second_epoch

ROOT = Path(__file__).resolve().parent.parent
# A tiny, quick run: volo_nano on 256 bundled training images for 2 epochs.
QUICK = dict(model="volo_nano", epochs=2, batch_size=32, lr=3e-3, warmup_epochs=0.5, drop_path=0.1,
             max_train=256, max_test=128, progress=False)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One uninterrupted 2-epoch run, shared by the tests below."""
    return T.train(out=str(tmp_path_factory.mktemp("runs")), name="full", **QUICK)


def _metrics_without_time(metrics):
    return [{k: v for k, v in m.items() if k != "seconds"} for m in metrics]


def test_run_writes_outputs_and_learns(run):
    d = run["run_dir"]
    for name in ("config.json", "metrics.csv", "curves.png", "last.npz", "best.npz"):
        assert (d / name).is_file(), name
    with open(d / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert list(rows[0]) == list(T.METRIC_FIELDS)
    assert float(rows[1]["train_loss"]) < float(rows[0]["train_loss"])
    assert not [p for p in d.iterdir() if p.name.endswith(".tmp")]

    ckpt = T.load_checkpoint(d)  # a run folder means its last.npz
    assert ckpt["epoch"] == 2 and ckpt["config"]["model"] == "volo_nano"
    assert ckpt["metrics"] == run["metrics"]
    assert set(ckpt["model"]) == set(run["model"].state_dict())
    assert ckpt["data"]["img_size"] == 32 and len(ckpt["data"]["classes"]) == 10
    with np.load(d / "last.npz", allow_pickle=False) as z:  # plain arrays and one JSON string
        assert "meta" in z.files and any(k.startswith("optimizer/state/") for k in z.files)


def test_resume_is_bit_for_bit(run, tmp_path, monkeypatch):
    cut_in_second_epoch(T, monkeypatch, out=str(tmp_path), name="cut", **QUICK)
    assert T.load_checkpoint(tmp_path / "cut")["epoch"] == 1

    resumed = T.train(resume=tmp_path / "cut", progress=False)
    assert resumed["run_dir"] == tmp_path / "cut"
    assert _metrics_without_time(resumed["metrics"]) == _metrics_without_time(run["metrics"])
    a, b = T.load_checkpoint(run["run_dir"]), T.load_checkpoint(tmp_path / "cut")
    assert_same_weights(a, b)
    assert a["scheduler"] == b["scheduler"]
    with open(tmp_path / "cut" / "metrics.csv") as f:
        assert len(list(csv.DictReader(f))) == 2


def test_resume_rejects_config_changes(run):
    with pytest.raises(ValueError, match="saved config"):
        T.train(resume=run["run_dir"], lr=1.0)


def test_fresh_run_refuses_to_overwrite(run):
    with pytest.raises(ValueError, match="already holds a run"):
        T.train(out=str(run["run_dir"].parent), name="full", **QUICK)


def test_bad_checkpoints_are_value_errors(run, tmp_path):
    data = (run["run_dir"] / "last.npz").read_bytes()
    cut = tmp_path / "cut.npz"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="cut.npz"):
        T.load_checkpoint(cut)
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a zip file")
    with pytest.raises(ValueError, match="junk.npz"):
        T.load_checkpoint(junk)
    other = tmp_path / "other.npz"
    np.savez(other, x=np.ones(2))
    with pytest.raises(ValueError, match="other.npz"):
        T.load_checkpoint(other)
    with pytest.raises(FileNotFoundError, match="missing.npz"):
        T.load_checkpoint(tmp_path / "missing.npz")


def test_missing_dataset_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no-such-folder"):
        T.train(dataset="fashion-mnist", data_dir=str(tmp_path / "no-such-folder"), out=str(tmp_path),
                name="x", progress=False)
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("patched", ["savez", "replace", "savez_halfway"])
def test_crash_while_saving_keeps_the_previous_checkpoint(tmp_path, monkeypatch, patched):
    path = tmp_path / "last.npz"
    T.save_checkpoint(path, {"epoch": 1, "w": np.arange(5.0)})

    def halfway(f, **arrays):  # writes part of the archive, then dies
        f.write(b"PK\x03\x04 partial")
        raise OSError("disk full")

    def fail(*args, **kwargs):
        raise OSError("disk full")

    if patched == "replace":
        monkeypatch.setattr(os, "replace", fail)
    else:
        monkeypatch.setattr(np, "savez", halfway if patched == "savez_halfway" else fail)
    with pytest.raises(OSError, match="disk full"):
        T.save_checkpoint(path, {"epoch": 2, "w": np.zeros(5)})
    monkeypatch.undo()
    ckpt = T.load_checkpoint(path)
    assert ckpt["epoch"] == 1 and np.array_equal(ckpt["w"], np.arange(5.0))
    assert [p.name for p in tmp_path.iterdir()] == ["last.npz"]  # no temporary file left behind


def test_checkpoint_round_trip_of_nested_values(tmp_path):
    tree = {"a": {"b": [np.ones((2, 3), np.float32), 3, "s"], "c": None}, "n": np.int64(4), "f": 0.5,
            "scalar": np.array(7)}
    T.save_checkpoint(tmp_path / "t.npz", tree)
    back = T.load_checkpoint(tmp_path / "t.npz")
    assert back["scalar"].shape == () and back["scalar"] == 7
    assert back["a"]["b"][0].dtype == np.float32 and back["a"]["b"][1:] == [3, "s"]
    assert back["a"]["c"] is None and back["n"] == 4 and back["f"] == 0.5


def test_evaluate_and_predict(run, tmp_path):
    from minivolo.datasets import load_dataset, write_idx
    ckpt = run["run_dir"] / "best.npz"
    test = load_dataset(train=False)
    # evaluate on another copy of the data: 40 test images in the MNIST file format
    write_idx(tmp_path / "t10k-images-idx3-ubyte", test.images[:40, 0])
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", test.labels[:40].astype(np.uint8))
    r = T.evaluate(ckpt, dataset="mnist", data_dir=tmp_path, out=tmp_path)
    assert r["confusion"].shape == (10, 10) and r["confusion"].sum() == 40
    assert np.array_equal(r["confusion"].sum(axis=1), np.bincount(test.labels[:40], minlength=10))
    assert r["accuracy"] == pytest.approx(np.trace(r["confusion"]) / 40)
    assert (tmp_path / "confusion.png").is_file()

    np.save(tmp_path / "img.npy", test.images[0, 0])       # (H, W) uint8
    top = T.predict(ckpt, [tmp_path / "img.npy", test.images[1].transpose(1, 2, 0)], topk=3)
    assert len(top) == 2 and all(len(t) == 3 for t in top)
    for t in top:
        probs = [p for _, p in t]
        assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-6
        assert all(name in test.classes for name, _ in t)
    with pytest.raises(ValueError, match="expected an image"):
        T.predict(ckpt, [np.zeros((2, 2, 2, 2))])


def _cli(*args, cwd=ROOT):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "minivolo", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


def test_cli_info():
    r = _cli("info", "volo_d1", "volo_d5", "volo_tiny")  # D5 (295M) is counted without drawing weights
    assert r.returncode == 0, r.stderr
    assert "volo_d1: 26,632,040 parameters (26.6M)" in r.stdout
    assert "volo_d5: 295,455,584 parameters (295.5M)" in r.stdout


def test_cli_train_evaluate_predict(tmp_path, run):
    r = _cli("train", "--model", "volo_nano", "--epochs", "1", "--max-train", "256", "--max-test", "128",
             "--batch-size", "32", "--out", tmp_path, "--name", "cli")
    assert r.returncode == 0, r.stderr
    assert "epoch   1/1" in r.stdout
    assert (tmp_path / "cli" / "last.npz").is_file()

    from matplotlib.image import imsave
    from minivolo.datasets import load_dataset
    imsave(tmp_path / "shoe.png", load_dataset(train=False).images[0, 0], cmap="gray")
    r = _cli("predict", tmp_path / "cli", tmp_path / "shoe.png", "--topk", "2")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"{tmp_path / 'shoe.png'}: ") and r.stdout.count(",") == 1


@pytest.mark.parametrize("args,message", [
    (["train", "--epochs", "0"], "expected a value > 0"),
    (["train", "--lr", "fast"], "expected a float"),
    (["train", "--model", "volo_huge"], "unknown model 'volo_huge'"),
    (["train", "--dataset", "imagenet"], "invalid choice"),
    (["evaluate", "nowhere/last.npz"], "error: no checkpoint at nowhere/last.npz"),
    (["train", "--dataset", "mnist", "--data-dir", "no-such-folder"], "error: root: no such directory"),
    (["train", "--seed", "-1"], "error: seed must be >= 0, got -1"),
    (["train", "--crop-padding", "-1"], "expected a value >= 0, got -1"),
    (["train", "--crop-padding", "1.5"], "expected an int, got '1.5'"),
    (["train", "--model", "volo_nano", "--img-size", "7", "--max-train", "64", "--quiet"],
     "error: img_size 7x7 is too small for patch_size 4"),
    (["train", "--resume", "no-such-run"], "error: no checkpoint at no-such-run"),
])
def test_cli_user_errors_exit_2_without_traceback(args, message, tmp_path):
    r = _cli(*args, cwd=tmp_path)
    assert r.returncode == 2
    assert message in r.stderr and "Traceback" not in r.stderr


def test_cli_corrupt_checkpoint(run, tmp_path):
    bad = tmp_path / "bad.npz"
    shutil.copy(run["run_dir"] / "last.npz", bad)
    bad.write_bytes(bad.read_bytes()[:1000])
    r = _cli("evaluate", bad)
    assert r.returncode == 2 and "bad.npz" in r.stderr and "Traceback" not in r.stderr


def test_predict_input_scales(run, tmp_path):
    """uint16 is scaled by 1/65535 (same prediction as the uint8 image); other scales are errors, not
    silently wrong predictions."""
    from minivolo.datasets import load_dataset
    ckpt = run["run_dir"] / "best.npz"
    img = load_dataset(train=False).images[0, 0]
    u8, u16 = T.predict(ckpt, [img, img.astype(np.uint16) * 257], topk=10)
    assert [c for c, _ in u8] == [c for c, _ in u16]
    np.testing.assert_allclose([p for _, p in u8], [p for _, p in u16], rtol=1e-5)
    np.save(tmp_path / "x255.npy", img.astype(np.float64))
    with pytest.raises(ValueError, match=r"x255.npy: expected float pixels in \[0, 1\], got values in \[0, 255\]"):
        T.predict(ckpt, [tmp_path / "x255.npy"])
    with pytest.raises(ValueError, match="expected float pixels"):
        T.predict(ckpt, [np.full((28, 28), np.nan)])
    with pytest.raises(ValueError, match="expected uint8, uint16 or float pixels, got int64"):
        T.predict(ckpt, [img.astype(np.int64)])


def test_negative_seed_is_a_config_error(tmp_path):
    with pytest.raises(ValueError, match="seed must be >= 0, got -1"):
        T.train(out=str(tmp_path), seed=-1, progress=False)


def test_cli_cuda_without_a_gpu_is_a_user_error(tmp_path):
    from minivolo import backend
    if backend.cuda_available():
        pytest.skip("a GPU is available here")
    r = _cli("train", "--device", "cuda", cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.startswith("error: ") and "Traceback" not in r.stderr


def test_checkpoint_module_is_the_one_reader_and_writer(tmp_path, monkeypatch):
    from minivolo import checkpoint
    assert T.save_checkpoint is checkpoint.save_checkpoint and T.load_checkpoint is checkpoint.load_checkpoint
    path = tmp_path / "f.bin"
    checkpoint.atomic_write(path, lambda f: f.write(b"one"))

    def dies(f):
        f.write(b"tw")
        raise OSError("disk full")
    with pytest.raises(OSError, match="disk full"):
        checkpoint.atomic_write(path, dies)
    assert path.read_bytes() == b"one" and [p.name for p in tmp_path.iterdir()] == ["f.bin"]
    # a file written by hand in the documented format (what older minivolo versions wrote) loads
    meta = '{"format": "minivolo-checkpoint-1", "epoch": 3, "w": {"__array__": "w"}}'
    np.savez(tmp_path / "old.npz", w=np.arange(3.0), meta=np.array(meta))
    ckpt = T.load_checkpoint(tmp_path / "old.npz")
    assert ckpt["epoch"] == 3 and ckpt["w"].tolist() == [0.0, 1.0, 2.0]


@pytest.mark.parametrize("crop_padding", [0, 2, 3])
def test_crop_padding_shifts_by_at_most_that_many_pixels_and_0_only_flips(crop_padding):
    """The training transform with crop_padding p: each sample is the evaluation transform's image shifted
    by (dy, dx) in [-p, p]^2 (zeros shifted in), mirrored or not; p = 0 gives no shift at all."""
    from minivolo.datasets import load_dataset
    ds = load_dataset(train=False)
    data = dict(img_size=32, mean=[0.0], std=[1.0])
    images = ds.images[:64].astype(np.float32) * np.float32(1 / 255)
    plain = T._eval_transform(data)(images)
    out = T._train_transform(data, True, crop_padding)(images, np.random.default_rng(0))
    p = crop_padding
    padded = np.pad(plain, ((0, 0), (0, 0), (p, p), (p, p)))
    shifts, mirrored = set(), set()
    for b in range(len(images)):
        found = [(dy, dx, flip) for dy in range(2 * p + 1) for dx in range(2 * p + 1) for flip in (False, True)
                 if np.array_equal(out[b], (lambda c: c[..., ::-1] if flip else c)(padded[b, :, dy:dy + 32, dx:dx + 32]))]
        assert found, f"sample {b} is no shifted/mirrored copy of the image"
        shifts.add(found[0][:2]), mirrored.add(found[0][2])
    assert mirrored == {False, True}
    assert (shifts == {(0, 0)}) if p == 0 else len(shifts) > 1


@pytest.mark.parametrize("value,message", [(-1, "crop_padding must be >= 0, got -1"),
                                           (1.5, "crop_padding must be an int number of pixels, got 1.5")])
def test_bad_crop_padding_is_a_config_error(tmp_path, value, message):
    with pytest.raises(ValueError, match=message):
        T.train(out=str(tmp_path), crop_padding=value, progress=False)


def test_a_config_saved_before_crop_padding_existed_keeps_padding_2(run):
    """Runs saved before the field existed cropped with padding 2: resuming, evaluating or relabelling
    them must not switch to the new default of 1."""
    ckpt = T.load_checkpoint(run["run_dir"] / "last.npz")
    assert T.saved_config(ckpt).crop_padding == ckpt["config"]["crop_padding"] == T.TrainConfig().crop_padding == 1
    old = dict(ckpt, config={k: v for k, v in ckpt["config"].items() if k != "crop_padding"})
    assert T.saved_config(old).crop_padding == 2
    assert T.saved_config(old, device="cpu").device == "cpu"
