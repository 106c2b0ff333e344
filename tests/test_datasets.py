"""Datasets, file formats, the DataLoader and the batched augmentations (checked against plain loops)."""
import gzip
import hashlib
import importlib.util
import pickle
import re
from pathlib import Path

import numpy as np
import pytest

from minivolo import backend
from minivolo import datasets as ds
from minivolo.datasets import (ArrayDataset, Compose, DataLoader, Normalize, RandomCrop,
                               RandomHorizontalFlip, Resize, load_dataset, read_idx, write_idx)

DEBIAN = ds.DEBIAN_FASHION_MNIST_ROOT
REPO = Path(__file__).resolve().parent.parent


# --- IDX ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["a.idx", "a.idx.gz"])
@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.int32, np.float32, np.float64])
def test_idx_round_trip(tmp_path, name, dtype):
    a = (np.arange(2 * 3 * 5) - 7).reshape(2, 3, 5).astype(dtype) if dtype != np.uint8 else \
        np.arange(30, dtype=np.uint8).reshape(2, 3, 5)
    write_idx(tmp_path / name, a)
    b = read_idx(tmp_path / name)
    assert b.dtype == a.dtype and b.shape == (2, 3, 5)
    np.testing.assert_array_equal(b, a)


def test_idx_header_bytes(tmp_path):
    # The MNIST label layout: 00 00 08 01, then N big-endian, then one byte per label.
    write_idx(tmp_path / "l", np.array([3, 1, 4], np.uint8))
    assert (tmp_path / "l").read_bytes() == bytes([0, 0, 8, 1, 0, 0, 0, 3, 3, 1, 4])
    header = [0, 0, 0x0C, 2, 0, 0, 0, 1, 0, 0, 0, 2]  # int32, 1 x 2
    (tmp_path / "m").write_bytes(bytes(header + [0, 0, 1, 0, 0xFF, 0xFF, 0xFF, 0xFE]))
    np.testing.assert_array_equal(read_idx(tmp_path / "m"), [[256, -2]])


def test_gzip_is_deterministic(tmp_path):
    a = np.arange(100, dtype=np.uint8)
    write_idx(tmp_path / "a.gz", a)
    write_idx(tmp_path / "b.gz", a)
    assert (tmp_path / "a.gz").read_bytes() == (tmp_path / "b.gz").read_bytes()
    assert (tmp_path / "a.gz").read_bytes()[4:8] == b"\x00\x00\x00\x00"  # mtime


def _idx_bytes(tmp_path, a):
    write_idx(tmp_path / "full", a)
    return (tmp_path / "full").read_bytes()


def test_truncated_raw_idx_names_file(tmp_path):
    raw = _idx_bytes(tmp_path, np.zeros((4, 28, 28), np.uint8))
    bad = tmp_path / "short-images-idx3-ubyte"
    bad.write_bytes(raw[:-10])
    with pytest.raises(ValueError, match=r"short-images-idx3-ubyte.*truncated.*3136 bytes.*3126"):
        read_idx(bad)
    bad.write_bytes(raw[:9])  # cut inside the header
    with pytest.raises(ValueError, match="short-images-idx3-ubyte.*header"):
        read_idx(bad)


def test_truncated_gzip_idx_names_file(tmp_path):
    raw = _idx_bytes(tmp_path, np.arange(3000, dtype=np.uint16).astype(np.uint8).reshape(3, 1000))
    bad = tmp_path / "cut.gz"
    bad.write_bytes(gzip.compress(raw)[:-30])
    with pytest.raises(ValueError, match="cut.gz.*gzip"):
        read_idx(bad)
    bad.write_bytes(b"\x1f\x8b" + b"garbage" * 5)
    with pytest.raises(ValueError, match="cut.gz.*gzip"):
        read_idx(bad)


def test_bad_magic_and_type_code(tmp_path):
    bad = tmp_path / "x"
    bad.write_bytes(b"PK\x03\x04rest")
    with pytest.raises(ValueError, match="x.*magic"):
        read_idx(bad)
    bad.write_bytes(bytes([0, 0, 0x42, 1, 0, 0, 0, 0]))
    with pytest.raises(ValueError, match="type code 0x42"):
        read_idx(bad)
    bad.write_bytes(bytes([0, 0, 8, 1, 0, 0, 0, 2, 1, 2, 3]))
    with pytest.raises(ValueError, match="too long"):
        read_idx(bad)


# --- the bundled subset -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def subset():
    return load_dataset("fashion-mnist-subset", train=True), load_dataset("fashion-mnist-subset", train=False)


def test_bundled_subset_counts(subset):
    train, test = subset
    for d, n in ((train, 10_000), (test, 2_000)):
        assert len(d) == n
        assert d.images.shape == (n, 1, 28, 28) and d.images.dtype == np.uint8
        assert d.labels.dtype == np.int64
        np.testing.assert_array_equal(np.bincount(d.labels, minlength=10), [n // 10] * 10)
        assert d.classes == ds.FASHION_MNIST_CLASSES and d.classes[9] == "Ankle boot"
        assert 0 < d.images.mean() < 255  # real pictures, not blanks
    image, label = train[3]
    assert image.shape == (1, 28, 28) and label == train.labels[3]


def test_bundled_files_are_small():
    files = list((REPO / "data" / "fashion-mnist-subset").iterdir())
    assert len(files) == 4 and sum(f.stat().st_size for f in files) < 6_000_000


def test_readme_hashes_match_bundled_files():
    readme = (REPO / "data" / "README.md").read_text()
    for path in (REPO / "data" / "fashion-mnist-subset").iterdir():
        row = re.search(rf"`{re.escape(path.name)}` \|.*`([0-9a-f]{{64}})`", readme)
        assert row and row.group(1) == hashlib.sha256(path.read_bytes()).hexdigest(), path.name
    for path in (REPO / "data" / "token-labels").iterdir():  # the label maps: listed with their folder
        row = re.search(rf"`token-labels/{re.escape(path.name)}` \|.*`([0-9a-f]{{64}})`", readme)
        assert row and row.group(1) == hashlib.sha256(path.read_bytes()).hexdigest(), path.name


@pytest.fixture(scope="module")
def debian():
    if not (DEBIAN / "train-images-idx3-ubyte.gz").exists():
        pytest.skip(f"full Fashion-MNIST not installed at {DEBIAN} (apt-get install dataset-fashion-mnist)")
    return load_dataset("fashion-mnist", train=True), load_dataset("fashion-mnist", train=False)


def test_subset_rows_come_from_full_dataset(subset, debian):
    for part, full in zip(subset, debian):
        assert len(full) in (60_000, 10_000)
        labels_of = {}
        for img, lab in zip(full.images.reshape(len(full), -1), full.labels):
            labels_of.setdefault(img.tobytes(), set()).add(int(lab))
        for img, lab in zip(part.images.reshape(len(part), -1), part.labels):
            assert int(lab) in labels_of[img.tobytes()]


def test_make_subset_reproduces_bundled_files(subset, debian):
    spec = importlib.util.spec_from_file_location("make_subset", REPO / "data" / "make_subset.py")
    make_subset = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_subset)
    arrays = make_subset.make_subset(DEBIAN, seed=0)
    train, test = subset
    np.testing.assert_array_equal(arrays["train-images-idx3-ubyte.gz"], train.images[:, 0])
    np.testing.assert_array_equal(arrays["train-labels-idx1-ubyte.gz"], train.labels)
    np.testing.assert_array_equal(arrays["t10k-images-idx3-ubyte.gz"], test.images[:, 0])
    np.testing.assert_array_equal(arrays["t10k-labels-idx1-ubyte.gz"], test.labels)


# --- load_dataset errors ------------------------------------------------------------------------------
def test_missing_root(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"root.*nowhere"):
        load_dataset("mnist", root=tmp_path / "nowhere")


def test_missing_file_in_root(tmp_path):
    with pytest.raises(FileNotFoundError, match="train-images-idx3-ubyte"):
        load_dataset("mnist", root=tmp_path)


def test_unknown_name_lists_known():
    with pytest.raises(ValueError, match="cifar10.*imagefolder"):
        load_dataset("imagenet-1k")


def test_mnist_raw_idx_files(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (5, 28, 28), dtype=np.uint8)
    write_idx(tmp_path / "t10k-images-idx3-ubyte", images)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.array([9, 0, 1, 2, 3], np.uint8))
    d = load_dataset("mnist", root=tmp_path, train=False)
    np.testing.assert_array_equal(d.images[:, 0], images)
    assert d.labels.tolist() == [9, 0, 1, 2, 3] and d.classes[9] == "9"


# --- ArrayDataset validation --------------------------------------------------------------------------
def test_label_out_of_range():
    images = np.zeros((4, 1, 2, 2), np.uint8)
    with pytest.raises(ValueError, match=r"label 7 at index 2.*\[0, 3\)"):
        ArrayDataset(images, np.array([0, 1, 7, 2]), ["a", "b", "c"])
    with pytest.raises(ValueError, match=r"label -1 at index 0"):
        ArrayDataset(images, np.array([-1, 1, 0, 2]), ["a", "b", "c"])


def test_array_dataset_shape_checks():
    with pytest.raises(ValueError, match="4 labels for 3 images"):
        ArrayDataset(np.zeros((3, 1, 2, 2), np.uint8), np.zeros(4, int), ["a"])
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        ArrayDataset(np.zeros((3, 2, 2), np.uint8), np.zeros(3, int), ["a"])


# --- CIFAR --------------------------------------------------------------------------------------------
def _pickle(path, obj):
    with open(path, "wb") as f:
        pickle.dump(obj, f)


def test_cifar10_fake_batches(tmp_path):
    rng = np.random.default_rng(1)
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]
    _pickle(tmp_path / "batches.meta", {b"label_names": names})
    rows = []
    for i in range(1, 6):
        data = rng.integers(0, 256, (2, 3072), dtype=np.uint8)
        rows.append(data)
        _pickle(tmp_path / f"data_batch_{i}", {b"data": data, b"labels": [i, 9 - i]})
    _pickle(tmp_path / "test_batch", {b"data": rows[0], b"labels": [0, 0]})
    d = load_dataset("cifar10", root=tmp_path)
    assert d.images.shape == (10, 3, 32, 32) and d.classes[1] == "automobile"
    assert d.labels.tolist() == [1, 8, 2, 7, 3, 6, 4, 5, 5, 4]
    # Row layout: 1024 red, 1024 green, 1024 blue, each row-major 32x32.
    assert d.images[0, 0, 0, 5] == rows[0][0, 5]
    assert d.images[0, 1, 2, 3] == rows[0][0, 1024 + 2 * 32 + 3]
    assert d.images[3, 2, 31, 31] == rows[1][1, 3071]
    assert len(load_dataset("cifar10", root=tmp_path, train=False)) == 2


def test_cifar100_fake_batches(tmp_path):
    data = np.arange(2 * 3072, dtype=np.int64).astype(np.uint8).reshape(2, 3072)
    _pickle(tmp_path / "meta", {b"fine_label_names": [f"c{i}".encode() for i in range(100)],
                                b"coarse_label_names": [b"x"] * 20})
    _pickle(tmp_path / "test", {b"data": data, b"fine_labels": [99, 42], b"coarse_labels": [1, 2]})
    d = load_dataset("cifar100", root=tmp_path, train=False)
    assert d.images.shape == (2, 3, 32, 32) and d.labels.tolist() == [99, 42] and d.classes[42] == "c42"
    np.testing.assert_array_equal(d.images.reshape(2, -1), data)
    with pytest.raises(FileNotFoundError, match="train"):
        load_dataset("cifar100", root=tmp_path, train=True)


# --- imagefolder --------------------------------------------------------------------------------------
def test_imagefolder_png(tmp_path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rng = np.random.default_rng(2)
    written = {}
    for cls in ("dog", "cat"):
        (tmp_path / "train" / cls).mkdir(parents=True)
        for k in range(2):
            rgb = rng.integers(0, 256, (6, 5, 3)) / 255
            plt.imsave(tmp_path / "train" / cls / f"{k}.png", rgb)
            written[(cls, k)] = rgb
    d = load_dataset("imagefolder", root=tmp_path)
    assert d.classes == ["cat", "dog"] and d.labels.tolist() == [0, 0, 1, 1]
    assert d.images.shape == (4, 3, 6, 5) and d.images.dtype == np.uint8
    expected = np.stack([written[("cat", 0)], written[("cat", 1)], written[("dog", 0)], written[("dog", 1)]])
    np.testing.assert_allclose(d.images / 255, expected.transpose(0, 3, 1, 2), atol=1 / 255 + 1e-9)
    with pytest.raises(FileNotFoundError, match="test/ or val/"):
        load_dataset("imagefolder", root=tmp_path, train=False)


def test_imagefolder_greyscale_and_size_mismatch(tmp_path):
    from PIL import Image

    (tmp_path / "val" / "a").mkdir(parents=True)
    grey = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    Image.fromarray(grey, mode="L").save(tmp_path / "val" / "a" / "g.png")
    d = load_dataset("imagefolder", root=tmp_path, train=False)
    assert d.images.shape == (1, 1, 3, 4)
    np.testing.assert_array_equal(d.images[0, 0], grey)
    Image.fromarray(np.zeros((5, 4), np.uint8), mode="L").save(tmp_path / "val" / "a" / "h.png")
    with pytest.raises(ValueError, match="same size.*h.png is 5x4"):
        load_dataset("imagefolder", root=tmp_path, train=False)
    (tmp_path / "val" / "a" / "h.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(ValueError, match="h.png: cannot read image"):
        load_dataset("imagefolder", root=tmp_path, train=False)


# --- DataLoader ---------------------------------------------------------------------------------------
def _toy(n=10):
    images = np.arange(n, dtype=np.uint8)[:, None, None, None] * np.ones((1, 1, 2, 3), np.uint8)
    return ArrayDataset(images, np.arange(n) % 3, ["a", "b", "c"])


def _ids(loader):
    # Every toy image is constant, equal to its index: recover the order from the batches.
    return [np.rint(x[:, 0, 0, 0] * 255).astype(int).tolist() for x, _ in loader]


def test_loader_shapes_and_dtypes():
    loader = DataLoader(_toy(10), batch_size=4)
    batches = list(loader)
    assert len(loader) == 3 and [len(x) for x, _ in batches] == [4, 4, 2]
    x, y = batches[0]
    assert x.shape == (4, 1, 2, 3) and x.dtype == np.float32 and y.dtype == np.int64
    np.testing.assert_allclose(x[:, 0, 1, 2], np.arange(4) / 255, rtol=1e-6)
    assert y.tolist() == [0, 1, 2, 0]
    assert _ids(loader) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


def test_loader_drop_last():
    loader = DataLoader(_toy(10), batch_size=4, drop_last=True)
    assert len(loader) == 2 and [len(x) for x, _ in loader] == [4, 4]
    assert len(DataLoader(_toy(8), batch_size=4, drop_last=True)) == 2


def test_shuffle_covers_every_index_once_per_epoch():
    loader = DataLoader(_toy(10), batch_size=3, shuffle=True, seed=5)
    orders = []
    for _ in range(3):
        flat = sum(_ids(loader), [])
        assert sorted(flat) == list(range(10))
        orders.append(flat)
    assert orders[0] != orders[1] and orders[1] != orders[2]  # each iteration is a new epoch
    assert loader.epoch == 3


def test_same_seed_and_epoch_same_batches():
    crop = Compose([RandomCrop(2, padding=1), RandomHorizontalFlip()])
    images = np.random.default_rng(0).integers(0, 256, (20, 2, 4, 4), dtype=np.uint8)
    data = ArrayDataset(images, np.arange(20), [str(i) for i in range(20)])  # label = index
    uninterrupted = DataLoader(data, batch_size=8, shuffle=True, seed=3, transform=crop)
    runs = [[(x.copy(), y.copy()) for x, y in uninterrupted] for _ in range(3)]  # epochs 0, 1, 2
    resumed = DataLoader(data, batch_size=8, shuffle=True, seed=3, transform=crop)
    resumed.set_epoch(2)
    for (xa, ya), (xb, yb) in zip(runs[2], resumed):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
    assert not np.array_equal(runs[0][0][1], runs[1][0][1])  # a different epoch, a different order
    other_seed = DataLoader(data, batch_size=8, shuffle=True, seed=4, transform=crop)
    assert not np.array_equal(next(iter(other_seed))[1], runs[0][0][1])


# --- augmentations ------------------------------------------------------------------------------------
def test_random_crop_matches_loop():
    x = np.random.default_rng(0).standard_normal((6, 2, 5, 7)).astype(np.float32)
    size, p = (4, 6), 2
    out = RandomCrop(size, padding=p)(x, np.random.default_rng(9))
    # The oracle draws the same offsets in the same order, then crops sample by sample.
    rng = np.random.default_rng(9)
    top, left = rng.integers(0, 5 + 2 * p - 4 + 1, size=6), rng.integers(0, 7 + 2 * p - 6 + 1, size=6)
    assert out.shape == (6, 2, 4, 6)
    for b in range(6):
        padded = np.zeros((2, 5 + 2 * p, 7 + 2 * p), np.float32)
        padded[:, p:p + 5, p:p + 7] = x[b]
        np.testing.assert_array_equal(out[b], padded[:, top[b]:top[b] + 4, left[b]:left[b] + 6])
    assert len(set(zip(top, left))) > 1  # offsets really vary per sample


def test_random_crop_no_padding_full_size_is_identity():
    x = np.random.default_rng(0).standard_normal((3, 1, 4, 4))
    np.testing.assert_array_equal(RandomCrop(4)(x, np.random.default_rng(0)), x)
    with pytest.raises(ValueError, match="larger"):
        RandomCrop(5)(x, np.random.default_rng(0))


def test_horizontal_flip():
    x = np.random.default_rng(0).standard_normal((50, 2, 3, 4))
    out = RandomHorizontalFlip(0.5)(x, np.random.default_rng(1))
    flipped = np.random.default_rng(1).random(50) < 0.5
    for b in range(50):
        np.testing.assert_array_equal(out[b], x[b, :, :, ::-1] if flipped[b] else x[b])
    assert 10 < flipped.sum() < 40
    np.testing.assert_array_equal(RandomHorizontalFlip(1.0)(x, np.random.default_rng(0)), x[..., ::-1])
    np.testing.assert_array_equal(RandomHorizontalFlip(0.0)(x, np.random.default_rng(0)), x)


def test_normalize():
    x = np.ones((2, 3, 2, 2), np.float32) * np.array([0.5, 0.25, 1.0], np.float32)[:, None, None]
    out = Normalize([0.5, 0.5, 0.5], [0.5, 0.25, 2.0])(x, None)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out[0, :, 0, 0], [0.0, -1.0, 0.25])
    np.testing.assert_allclose(Normalize([0.2860], [0.3530])(x[:, :1]), (0.5 - 0.2860) / 0.3530, rtol=1e-6)
    with pytest.raises(ValueError, match="channels"):
        Normalize([0.1, 0.2], [1, 1])(x)


def test_resize_pads_and_crops_centred():
    x = np.random.default_rng(0).random((2, 1, 28, 28)).astype(np.float32) + 1  # no zeros inside
    up = Resize(32)(x)
    assert up.shape == (2, 1, 32, 32)
    np.testing.assert_array_equal(up[:, :, 2:30, 2:30], x)
    assert (up != 0).sum() == 2 * 28 * 28  # the border is zero
    big = np.random.default_rng(1).random((2, 3, 32, 32))
    np.testing.assert_array_equal(Resize(28)(big), big[:, :, 2:30, 2:30])
    np.testing.assert_array_equal(Resize((30, 34))(big)[:, :, :, 1:33], big[:, :, 1:31])
    np.testing.assert_array_equal(Resize(32)(big), big)


def test_compose_on_loader():
    data = ArrayDataset(np.full((4, 1, 28, 28), 255, np.uint8), np.zeros(4, int), ["a"])
    loader = DataLoader(data, batch_size=4, transform=Compose([Resize(32), Normalize([0.5], [0.5])]))
    x, _ = next(iter(loader))
    assert x.shape == (4, 1, 32, 32) and x.dtype == np.float32
    assert x[0, 0, 0, 0] == -1.0 and x[0, 0, 16, 16] == 1.0


@pytest.mark.skipif(not backend.cuda_available(), reason="needs CuPy and a CUDA GPU")
def test_loader_on_cuda_matches_cpu():
    images = np.random.default_rng(0).integers(0, 256, (10, 1, 28, 28), dtype=np.uint8)
    data = ArrayDataset(images, np.arange(10) % 2, ["a", "b"])
    augment = Compose([Resize(32), RandomCrop(32, padding=4), RandomHorizontalFlip(), Normalize([0.3], [0.4])])
    cpu = DataLoader(data, batch_size=4, shuffle=True, transform=augment)
    gpu = DataLoader(data, batch_size=4, shuffle=True, transform=augment, device="cuda")
    for (xc, yc), (xg, yg) in zip(cpu, gpu):
        assert backend.device_of(xg) == "cuda" and backend.device_of(yg) == "cuda"
        np.testing.assert_allclose(backend.to_numpy(xg), xc, rtol=1e-6)
        np.testing.assert_array_equal(backend.to_numpy(yg), yc)


@pytest.mark.parametrize("files,message", [
    ({"batches.meta": [1, 2]}, r"batches.meta: not a CIFAR file of this kind: expected entries label_names, found list"),
    ({"batches.meta": {b"label_names": [b"a"] * 10}, "test_batch": {b"data": np.zeros((2, 3072), np.uint8)}},
     r"test_batch: not a CIFAR file of this kind: expected entries labels, found \['data'\]"),
    ({"batches.meta": {b"label_names": [b"a"] * 10},  # a CIFAR-100 batch where CIFAR-10's belongs
      "test_batch": {b"data": np.zeros((2, 3072), np.uint8), b"fine_labels": [0, 1]}},
     r"expected entries labels, found \['data', 'fine_labels'\]"),
])
def test_cifar_wrong_files_are_value_errors(tmp_path, files, message):
    for name, content in files.items():
        _pickle(tmp_path / name, content)
    with pytest.raises(ValueError, match=message):
        load_dataset("cifar10", root=tmp_path, train=False)


def test_loader_batch_larger_than_dataset_matches_torch():
    torch = pytest.importorskip("torch", reason="compares with torch (the test oracle), which is not installed")
    for n, batch_size, drop_last in [(5, 8, False), (5, 8, True), (5, 5, True), (7, 3, False), (7, 3, True)]:
        ours = DataLoader(_toy(n), batch_size=batch_size, shuffle=True, drop_last=drop_last)
        theirs = torch.utils.data.DataLoader(list(range(n)), batch_size=batch_size, drop_last=drop_last)
        assert len(ours) == len(theirs) and [len(x) for x, _ in ours] == [len(b) for b in theirs]
    with pytest.raises(ValueError, match="batch_size must be an integer >= 1, got 2.5"):
        DataLoader(_toy(4), batch_size=2.5)


def test_random_crop_rejects_negative_padding():
    with pytest.raises(ValueError, match="padding must be >= 0, got -1"):
        RandomCrop(4, padding=-1)
