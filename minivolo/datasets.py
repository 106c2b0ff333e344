"""Data: file formats, datasets, a DataLoader and batched augmentations.

    read_idx / write_idx      the IDX format of (Fashion-)MNIST, gzipped or raw
    ArrayDataset              images (N, C, H, W) uint8, labels (N,) int64, class names
    load_dataset(name, ...)   the bundled Fashion-MNIST subset, fashion-mnist, mnist, cifar10, cifar100,
                              imagefolder
    DataLoader                batches (x, y) on a device; order and augmentation a pure function of
                              (seed, epoch), so a resumed run sees the same batches as an uninterrupted one;
                              with return_params=True, (x, y, params): the sample indices and the crop
                              boxes and flips the augmentations drew (for token-label targets)
    RandomCrop, RandomHorizontalFlip, Normalize, Resize, Compose
                              augmentations on whole batches x: (B, C, H, W) -> (B, C, H', W'), NumPy or
                              CuPy, with no Python loop over samples or pixels

The random numbers of the augmentations come from ``rng``, a generator on the batch's device
(``numpy.random.Generator`` or ``cupy.random.Generator``), so that a GPU batch needs no host arrays: per
batch, only the uint8 images and the labels cross to the device. Every transform is called as
``t(x, rng)``, or ``t(x, rng, params)`` when the loader records parameters: ``params`` is a dict in which
RandomCrop writes the crop boxes and RandomHorizontalFlip the flips it drew (on the batch's device, as
torchvision's ``get_params`` returns them), so that targets can follow the augmentation.
"""
from __future__ import annotations

import gzip
import io
import pickle
import zlib
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from . import backend
from .functional.conv import _pair

FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
MNIST_CLASSES = [str(d) for d in range(10)]

BUNDLED_ROOT = Path(__file__).resolve().parent.parent / "data" / "fashion-mnist-subset"
DEBIAN_FASHION_MNIST_ROOT = Path("/usr/share/datasets/fashion-mnist")


# --- the IDX format --------------------------------------------------------------------------------
# Header: two zero bytes, a type code, the number of dimensions n, then n big-endian uint32 sizes;
# the payload follows in C order, big-endian.
_IDX_DTYPES = {0x08: np.dtype(np.uint8), 0x09: np.dtype(np.int8), 0x0B: np.dtype(">i2"),
               0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


def read_idx(path: str | Path) -> np.ndarray:
    """The array stored in an IDX file (gzipped or raw; gzip is recognised by its magic bytes).

    Raises ValueError, naming the file, when the gzip stream is corrupt or truncated, the header is
    malformed, or the payload is not exactly prod(dims) * itemsize bytes.
    """
    path = Path(path)
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (EOFError, gzip.BadGzipFile, zlib.error, OSError) as e:
            raise ValueError(f"{path}: corrupt or truncated gzip data ({e})") from e
    if len(raw) < 4 or raw[:2] != b"\x00\x00":
        raise ValueError(f"{path}: not an IDX file (expected magic bytes 00 00, got {raw[:2].hex(' ')!r})")
    code, ndim = raw[2], raw[3]
    if code not in _IDX_DTYPES:
        known = ", ".join(f"0x{c:02X}" for c in _IDX_DTYPES)
        raise ValueError(f"{path}: unknown IDX type code 0x{code:02X} (expected one of {known})")
    if ndim == 0:
        raise ValueError(f"{path}: IDX header has 0 dimensions")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path}: truncated IDX header: {ndim} dimensions need {header} bytes, "
                         f"file has {len(raw)}")
    dims = tuple(int(d) for d in np.frombuffer(raw, ">u4", ndim, offset=4))
    dtype = _IDX_DTYPES[code]
    expected = int(np.prod(dims)) * dtype.itemsize
    if len(raw) - header != expected:
        what = "truncated" if len(raw) - header < expected else "too long"
        raise ValueError(f"{path}: {what} IDX payload: header says {'x'.join(map(str, dims))} {dtype.name} "
                         f"= {expected} bytes, file has {len(raw) - header}")
    return np.frombuffer(raw, dtype, offset=header).reshape(dims).astype(dtype.newbyteorder("="))


def write_idx(path: str | Path, array: np.ndarray) -> None:
    """Write ``array`` as an IDX file; gzipped (mtime=0, no file name: same bytes every run) when the
    name ends in ``.gz``."""
    array = np.asarray(array)
    codes = {dt.newbyteorder("="): code for code, dt in _IDX_DTYPES.items()}
    if array.dtype not in codes or array.ndim == 0 or array.ndim > 255:
        raise ValueError(f"write_idx: expected a 1..255-D array of {sorted(d.name for d in codes)}, "
                         f"got {array.ndim}-D {array.dtype}")
    code = codes[array.dtype]
    data = (bytes([0, 0, code, array.ndim]) + np.asarray(array.shape, ">u4").tobytes()
            + np.ascontiguousarray(array, _IDX_DTYPES[code]).tobytes())
    path = Path(path)
    if path.suffix == ".gz":
        buf = io.BytesIO()
        with gzip.GzipFile(filename="", mode="wb", fileobj=buf, compresslevel=9, mtime=0) as f:
            f.write(data)
        data = buf.getvalue()
    path.write_bytes(data)


# --- datasets --------------------------------------------------------------------------------------
class ArrayDataset:
    """An image classification dataset held in memory.

    images: (N, C, H, W) uint8;  labels: (N,) int64 in [0, len(classes));  classes: the class names.
    ``dataset[i]`` is ``(images[i], labels[i])``.
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, classes: Sequence[str]):
        images, labels = np.asarray(images), np.asarray(labels)
        if images.ndim != 4 or images.dtype != np.uint8:
            raise ValueError(f"images: expected a (N, C, H, W) uint8 array, got {images.ndim}-D {images.dtype} "
                             f"of shape {images.shape}")
        if labels.ndim != 1 or labels.dtype.kind not in "iu":
            raise ValueError(f"labels: expected a (N,) integer array, got {labels.dtype} "
                             f"of shape {labels.shape}")
        if len(labels) != len(images):
            raise ValueError(f"expected as many labels as images, got {len(labels)} labels "
                             f"for {len(images)} images")
        bad = np.flatnonzero((labels < 0) | (labels >= len(classes)))
        if bad.size:
            i = int(bad[0])
            raise ValueError(f"label {int(labels[i])} at index {i} is outside the valid range "
                             f"[0, {len(classes)}) of {len(classes)} classes")
        self.images = images
        self.labels = labels.astype(np.int64)
        self.classes = list(classes)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
        return self.images[i], int(self.labels[i])

    def __repr__(self) -> str:
        n, c, h, w = self.images.shape
        return f"ArrayDataset({n} images of {c}x{h}x{w}, {len(self.classes)} classes)"


def _file_in(root: Path, *names: str) -> Path:
    """The first of ``names`` that exists in ``root``; FileNotFoundError naming them otherwise."""
    for name in names:
        if (root / name).is_file():
            return root / name
    raise FileNotFoundError(f"expected file {' or '.join(names)} in {root}")


def _load_idx(root: Path, train: bool, classes: list[str]) -> ArrayDataset:
    """(Fashion-)MNIST: {train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz] -> (N, 1, 28, 28) images."""
    split = "train" if train else "t10k"
    arrays = []
    for kind, ndim in (("images-idx3", 3), ("labels-idx1", 1)):
        name = f"{split}-{kind}-ubyte"
        path = _file_in(root, name + ".gz", name)
        array = read_idx(path)
        if array.ndim != ndim:
            raise ValueError(f"{path}: expected {ndim}-D {kind.split('-')[0]}, got shape {array.shape}")
        arrays.append(array)
    images, labels = arrays
    return ArrayDataset(images[:, None], labels, classes)


def _unpickle(path: Path, *keys: bytes) -> list:
    """The entries ``keys`` of a CIFAR pickle (a dict); ValueError naming the file when one is missing."""
    # The CIFAR python batches are pickles written by Python 2 (hence encoding="bytes"). Unpickling
    # runs code: only load CIFAR files from a source you trust.
    try:
        with open(path, "rb") as f:
            content = pickle.load(f, encoding="bytes")
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, ImportError) as e:
        raise ValueError(f"{path}: not a readable CIFAR pickle ({e})") from e
    missing = [k.decode() for k in keys if not isinstance(content, dict) or k not in content]
    if missing:
        found = sorted(k.decode() if isinstance(k, bytes) else str(k) for k in content) \
            if isinstance(content, dict) else type(content).__name__
        raise ValueError(f"{path}: not a CIFAR file of this kind: expected entries {', '.join(missing)}, "
                         f"found {found}")
    return [content[k] for k in keys]


def _load_cifar(root: Path, train: bool, cifar100: bool) -> ArrayDataset:
    """CIFAR-10/100 python batches: rows of 3072 bytes (1024 R, 1024 G, 1024 B) -> (N, 3, 32, 32)."""
    if cifar100:  # the 100 fine classes, not the 20 coarse superclasses
        batches = ["train" if train else "test"]
        meta, names_key, labels_key = "meta", b"fine_label_names", b"fine_labels"
    else:
        batches = [f"data_batch_{i}" for i in range(1, 6)] if train else ["test_batch"]
        meta, names_key, labels_key = "batches.meta", b"label_names", b"labels"
    names, = _unpickle(_file_in(root, meta), names_key)
    classes = [n.decode() for n in names]
    images, labels = [], []
    for name in batches:
        path = _file_in(root, name)
        data, batch_labels = _unpickle(path, b"data", labels_key)
        data = np.asarray(data, np.uint8)
        if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
            raise ValueError(f"{path}: expected data of shape (N, 3072), got {data.shape}")
        images.append(data.reshape(-1, 3, 32, 32))
        labels.append(np.asarray(batch_labels, np.int64))
    return ArrayDataset(np.concatenate(images), np.concatenate(labels), classes)


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def read_image(path: Path) -> np.ndarray:
    """One image file -> (C, H, W) uint8; greyscale stays 1 channel, alpha is dropped."""
    from matplotlib.image import imread  # imported here: only imagefolder needs matplotlib

    try:
        img = imread(path)
    except (OSError, ValueError, SyntaxError) as e:  # Pillow's errors for unreadable or corrupt files
        raise ValueError(f"{path}: cannot read image ({e})") from e
    if img.dtype.kind == "f":  # PNGs come back as floats in [0, 1]
        img = np.rint(img * 255)
    img = np.clip(img, 0, 255).astype(np.uint8)
    if img.ndim == 2:
        img = img[:, :, None]
    if img.shape[2] in (2, 4):  # grey+alpha, RGB+alpha
        img = img[:, :, :-1]
    return img.transpose(2, 0, 1)


def _load_imagefolder(root: Path) -> ArrayDataset:
    """root/CLASS/*.png|jpg|jpeg, classes sorted by name; the split folder is picked by load_dataset."""
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    files = [(path, label) for label, name in enumerate(classes)
             for path in sorted((root / name).iterdir()) if path.suffix.lower() in IMAGE_SUFFIXES]
    if not files:
        raise FileNotFoundError(f"expected image files ({', '.join(IMAGE_SUFFIXES)}) in class folders "
                                f"under {root}, found none")
    images = []
    for path, _ in files:
        img = read_image(path)
        if images and img.shape != images[0].shape:
            c, h, w = images[0].shape
            raise ValueError(f"all images must have the same size: {files[0][0]} is {h}x{w} with {c} "
                             f"channel(s), {path} is {img.shape[1]}x{img.shape[2]} with {img.shape[0]}")
        images.append(img)
    return ArrayDataset(np.stack(images), np.array([label for _, label in files]), classes)


def _imagefolder_split(root: Path, train: bool) -> Path:
    names = ("train",) if train else ("test", "val")
    for name in names:
        if (root / name).is_dir():
            return root / name
    if train:
        return root
    raise FileNotFoundError(f"expected a test/ or val/ folder in {root} for train=False")


# name -> (default root or None, loader(root, train))
_DATASETS: dict[str, tuple[Path | None, Callable[[Path, bool], ArrayDataset]]] = {
    "fashion-mnist-subset": (BUNDLED_ROOT, lambda r, t: _load_idx(r, t, FASHION_MNIST_CLASSES)),
    "fashion-mnist": (DEBIAN_FASHION_MNIST_ROOT, lambda r, t: _load_idx(r, t, FASHION_MNIST_CLASSES)),
    "mnist": (None, lambda r, t: _load_idx(r, t, MNIST_CLASSES)),
    "cifar10": (None, lambda r, t: _load_cifar(r, t, cifar100=False)),
    "cifar100": (None, lambda r, t: _load_cifar(r, t, cifar100=True)),
    "imagefolder": (None, lambda r, t: _load_imagefolder(_imagefolder_split(r, t))),
}
DATASETS = tuple(_DATASETS)


def load_dataset(name: str = "fashion-mnist-subset", root: str | Path | None = None,
                 train: bool = True) -> ArrayDataset:
    """Load a dataset split into memory.

    name: "fashion-mnist-subset" (bundled in data/, 10,000 train / 2,000 test), "fashion-mnist" and "mnist"
    (the four IDX files in root, .gz or not; fashion-mnist defaults to the Debian package's folder),
    "cifar10" / "cifar100" (the python pickled batches in root), "imagefolder" (root[/train or /test|val]
    /CLASS/*.png|jpg|jpeg, all the same size).
    """
    if name not in _DATASETS:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
    default_root, loader = _DATASETS[name]
    if root is None:
        if default_root is None:
            raise ValueError(f"dataset {name!r} has no default location; pass root=<folder> "
                             "(--data-dir on the command line)")
        root = default_root
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"root: no such directory {root} (dataset {name!r})")
    return loader(root, train)


# --- augmentations on batches ----------------------------------------------------------------------
class RandomCrop:
    """Zero-pad by ``padding`` on each side, then crop ``size`` at a random offset per sample.

    x: (B, C, H, W) -> (B, C, h, w); out[b] = pad(x)[b, :, t_b:t_b+h, l_b:l_b+w], t_b ~ U{0..H+2p-h}.
    With a ``params`` dict, writes ``params["boxes"]``: (B, 4) = (x1, y1, x2, y2) of each crop in pixels
    of the un-padded input (``token_labels.crop_boxes``), float64 on x's device.
    """

    def __init__(self, size: int | Sequence[int], padding: int = 0):
        if padding < 0:
            raise ValueError(f"RandomCrop: padding must be >= 0, got {padding}")
        self.size, self.padding = _pair(size), int(padding)

    def __call__(self, x, rng, params: dict | None = None):
        xp = backend.get_array_module(x)
        p, (h, w) = self.padding, self.size
        if p:
            x = xp.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))
        B, C, H, W = x.shape
        if h > H or w > W:
            raise ValueError(f"RandomCrop: crop {h}x{w} is larger than the padded image {H}x{W}")
        # drawn on x's device when rng is (asarray copies a host generator's draws once)
        top = xp.asarray(rng.integers(0, H - h + 1, size=B))
        left = xp.asarray(rng.integers(0, W - w + 1, size=B))
        if params is not None:  # x1 = left - p, y1 = top - p (the box in the un-padded image)
            x1, y1 = left.astype(np.float64) - p, top.astype(np.float64) - p
            params["boxes"] = xp.stack([x1, y1, x1 + w, y1 + h], axis=1)
        # One gather: index arrays broadcast to (B, C, h, w).
        rows = top[:, None, None, None] + xp.arange(h)[:, None]
        cols = left[:, None, None, None] + xp.arange(w)
        return x[xp.arange(B)[:, None, None, None], xp.arange(C)[:, None, None], rows, cols]


class RandomHorizontalFlip:
    """Mirror each sample left-right with probability p.  x: (B, C, H, W) -> (B, C, H, W).

    With a ``params`` dict, writes ``params["flips"]``: (B,) bool on x's device, True where mirrored.
    """

    def __init__(self, p: float = 0.5):
        self.p = p

    def __call__(self, x, rng, params: dict | None = None):
        xp = backend.get_array_module(x)
        flip = xp.asarray(rng.random(len(x))) < self.p
        if params is not None:
            params["flips"] = flip
        return xp.where(flip[:, None, None, None], x[..., ::-1], x)


class Normalize:
    """(x - mean[c]) / std[c] per channel.  x: (B, C, H, W) -> (B, C, H, W)."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        self.mean, self.std = np.asarray(mean, np.float64).ravel(), np.asarray(std, np.float64).ravel()
        self._on_device: dict = {}  # (array module, dtype) -> (mean, std) there: copied once, not per batch

    def __call__(self, x, rng=None, params: dict | None = None):
        xp = backend.get_array_module(x)
        if {len(self.mean), len(self.std)} - {1, x.shape[1]}:
            raise ValueError(f"Normalize: expected mean/std with 1 or {x.shape[1]} (channels) values, "
                             f"got {len(self.mean)} and {len(self.std)}")
        key = (xp.__name__, x.dtype)
        if key not in self._on_device:
            self._on_device[key] = tuple(xp.asarray(v, x.dtype).reshape(1, -1, 1, 1) for v in (self.mean, self.std))
        mean, std = self._on_device[key]
        return (x - mean) / std


class Resize:
    """Centre the image in a ``size`` canvas: zero-pad where the target is larger, centre-crop where
    smaller (no interpolation; puts 28x28 images into a 32x32 model).

    x: (B, C, H, W) -> (B, C, h, w); an odd difference puts the extra row/column at the bottom/right.
    """

    def __init__(self, size: int | Sequence[int]):
        self.size = _pair(size)

    def __call__(self, x, rng=None, params: dict | None = None):
        xp = backend.get_array_module(x)
        pads = []
        for axis, target in zip((2, 3), self.size):
            n = x.shape[axis]
            if target < n:  # crop
                start = (n - target) // 2
                x = x[(slice(None),) * axis + (slice(start, start + target),)]
                pads.append((0, 0))
            else:
                pads.append(((target - n) // 2, target - n - (target - n) // 2))
        if any(pads[0] + pads[1]):
            x = xp.pad(x, ((0, 0), (0, 0), pads[0], pads[1]))
        return x


class Compose:
    """Apply transforms in order, passing each the same generator (and the same ``params`` dict, when
    one is given: the transforms then must accept it as their third argument)."""

    def __init__(self, transforms: Sequence[Callable]):
        self.transforms = list(transforms)

    def __call__(self, x, rng=None, params: dict | None = None):
        for t in self.transforms:
            x = t(x, rng) if params is None else t(x, rng, params)
        return x


# --- the loader ------------------------------------------------------------------------------------
class _RankRows:
    """A random generator (NumPy's or CuPy's) as seen by one rank of a data-parallel run: a per-sample
    draw of ``size`` (b, ...) is made for the global batch, (b * num_replicas, ...), exactly as one
    process draws it, and this rank's rows ``rank::num_replicas`` are returned (the rows of its samples,
    see ``DataLoader``). Draws without ``size`` are the same on every rank. So every rank consumes the
    generator as one process would, and augments each sample as one process would."""

    def __init__(self, rng, rank: int, num_replicas: int):
        self.rng, self.rank, self.num_replicas = rng, rank, num_replicas

    def __getattr__(self, name: str):
        draw = getattr(self.rng, name)

        def rows(*args, size=None, **kwargs):
            if size is None:
                return draw(*args, **kwargs)
            size = (size,) if isinstance(size, (int, np.integer)) else tuple(size)
            w = self.num_replicas
            return draw(*args, size=(size[0] * w,) + size[1:], **kwargs)[self.rank::w]
        return rows

    def random(self, size=None, dtype=np.float64):
        return self.__getattr__("random")(size=size, dtype=dtype)


class DataLoader:
    """Batches ``(x, y)`` of an ArrayDataset on ``device``.

    x: (B, C, H, W) float32 = transform(images[idx] * scale, rng); y: (B,) int64.
    Epoch e shuffles with numpy's default_rng([seed, e]) and augments with the generator
    default_rng([seed, e, 1]) of the device's array module (so a GPU batch draws its crops and flips on
    the GPU): a run resumed with ``set_epoch(e)`` sees exactly the batches an uninterrupted run saw. Each
    ``iter()`` uses the current epoch and then advances it by one. Per batch, two host->device copies:
    the uint8 images (converted to float32 on the device) and the labels.

    Data-parallel (``num_replicas`` > 1, this process ``rank``), as torch's DistributedSampler: every
    rank draws the same (seed, epoch) permutation, pads it by repeating its first indices to a multiple
    of num_replicas (``drop_last``: cuts it to one instead; ``pad=False``: neither, the last shards are
    one shorter, for evaluation that must count every image once) and takes every num_replicas-th index
    from ``rank``. Batch k of all ranks together is then batch k of one process with batch size
    batch_size x num_replicas, rank r holding its rows r::num_replicas; per-sample augmentation is
    drawn for that global batch and sliced the same way (``_RankRows``).

    ``return_params=True``: batches ``(x, y, params)`` with ``params["indices"]`` (B,) host int64, the
    samples' dataset indices; ``params["boxes"]`` (B, 4) float64 = (x1, y1, x2, y2), each sample's crop
    in pixels of the image before the crop (the Resize'd image: ``token_labels.crop_boxes``), the whole
    image when no transform crops; ``params["flips"]`` (B,) bool, mirrored left-right (all False when
    no transform flips). boxes and flips are on ``device``, drawn there with the augmentation (no
    copy, no wait); the transform is called as ``transform(x, rng, params)`` and fills them in.
    The draws, hence x, are the same as without return_params.
    """

    def __init__(self, dataset: ArrayDataset, batch_size: int = 128, shuffle: bool = False,
                 drop_last: bool = False, seed: int = 0, transform: Callable | None = None,
                 device: str = "cpu", scale: float = 1 / 255, num_replicas: int = 1, rank: int = 0,
                 pad: bool = True, return_params: bool = False):
        if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        if not isinstance(num_replicas, (int, np.integer)) or num_replicas < 1:
            raise ValueError(f"num_replicas must be an integer >= 1, got {num_replicas!r}")
        if not isinstance(rank, (int, np.integer)) or not 0 <= rank < num_replicas:
            raise ValueError(f"rank must be an integer in [0, {num_replicas}) (num_replicas), got {rank!r}")
        self.dataset, self.batch_size, self.shuffle, self.drop_last = dataset, batch_size, shuffle, drop_last
        self.seed, self.transform, self.device, self.scale = seed, transform, device, scale
        self.num_replicas, self.rank, self.pad = num_replicas, rank, pad
        self.return_params = bool(return_params)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def num_samples(self) -> int:
        """The number of samples of this rank's shard per epoch (all of them with one process)."""
        n, w = len(self.dataset), self.num_replicas
        if w == 1:
            return n
        if self.drop_last:
            return n // w
        return -(-n // w) if self.pad else len(range(self.rank, n, w))

    def __len__(self) -> int:
        n, b = self.num_samples(), self.batch_size
        return n // b if self.drop_last else -(-n // b)

    def __iter__(self) -> Iterator[tuple]:
        epoch, self.epoch = self.epoch, self.epoch + 1  # advance now, not on the first next()
        return self._batches(np.random.default_rng([self.seed, epoch]),
                             backend.array_module(self.device).random.default_rng([self.seed, epoch, 1]))

    def _order(self, rng: np.random.Generator) -> np.ndarray:
        """This rank's sample indices for the epoch, in order."""
        n, w = len(self.dataset), self.num_replicas
        order = rng.permutation(n) if self.shuffle else np.arange(n)
        if w == 1:
            return order
        total = self.num_samples() * w if self.drop_last or self.pad else n
        if total > n:  # pad by repeating the first indices (cyclically when n < total - n)
            order = np.concatenate([order, np.resize(order, total - n)])
        return order[self.rank:total:w]

    def _batches(self, rng: np.random.Generator, augment_rng) -> Iterator[tuple]:
        order = self._order(rng)
        if self.num_replicas > 1:
            augment_rng = _RankRows(augment_rng, self.rank, self.num_replicas)
        for i in range(len(self)):
            idx = order[i * self.batch_size:(i + 1) * self.batch_size]
            x = backend.to_device(self.dataset.images[idx], self.device).astype(np.float32)
            x *= np.float32(self.scale)
            params = {"indices": idx.astype(np.int64)} if self.return_params else None
            if self.transform is not None:
                x = self.transform(x, augment_rng) if params is None else self.transform(x, augment_rng, params)
            y = backend.to_device(self.dataset.labels[idx], self.device)
            if params is None:
                yield x, y
                continue
            xp, (B, _, H, W) = backend.get_array_module(x), x.shape
            if "boxes" not in params:  # no crop: the whole image (built on the device, no host array)
                params["boxes"] = xp.zeros((B, 4), np.float64)
                params["boxes"][:, 2], params["boxes"][:, 3] = W, H
            if "flips" not in params:
                params["flips"] = xp.zeros(B, dtype=bool)
            yield x, y, params
