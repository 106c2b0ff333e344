"""Token labeling: a teacher's dense label maps, stored, checked, and turned into per-batch targets.

Token labeling (LV-ViT, arXiv 2104.10858; used by VOLO) gives every output token its own target: the
score map of a teacher, run once over the un-augmented training images and resampled to each
augmented crop. The pieces, in the order they are used:

    relabel(model, dataset, ...)            teacher logits at every token: (images, C, h, w) float16
    save_label_maps(path, logits, ...)      the .npz file, written atomically, with its metadata
    load_label_maps(path, dataset, ...)     -> LabelMaps; refuses a file that does not fit the dataset
    LabelMaps.maps(indices, device)         the batch's label maps (B, C, h, w), float32 logits
    crop_boxes(top, left, size, padding)    the boxes of a RandomCrop, in image pixel coordinates
    roi_align(input, boxes, output_size)    bilinear ROI-align of boxes to a fixed grid
    dense_targets(maps, boxes, flips, ...)  (B, C, 2 + N) targets for losses.TokenLabelCrossEntropy
    LabelMaps.targets(indices, ...)         maps + dense_targets in one call

Coordinates. A box is ``(x1, y1, x2, y2)`` as in torchvision: x runs along the columns (width), y along
the rows (height). A map of h x w cells covers the image; cell (i, j) covers rows [i, i+1) and columns
[j, j+1) in map units, its centre at (j + 0.5, i + 0.5). (The public TokenLabeling code hands roi_align
its crop as (row, col, row, col), so a crop at the upper right reads the lower left of the map; the
tests here check the corner a crop lands in.)
"""
from __future__ import annotations

import json
import math
import zlib
from pathlib import Path

import numpy as np

from . import backend
from .checkpoint import atomic_write, read_npz
from .datasets import DataLoader
from .tensor import Tensor, no_grad

__all__ = ["LABEL_MAPS_FORMAT", "LabelMaps", "relabel", "dense_logits", "save_label_maps", "load_label_maps",
           "images_checksum", "DENSE_MAPS", "crop_boxes", "roi_align", "dense_targets"]

LABEL_MAPS_FORMAT = "minivolo-label-maps-1"
ALL_CLASSES_UP_TO = 100  # more classes than this: keep the top-k logits per location (tlt keeps 5)
DEFAULT_TOPK = 5


# --- the teacher's dense predictions ---------------------------------------------------------------
DENSE_MAPS = ("output", "aux")


def dense_logits(model, x: Tensor, maps: str = "output") -> Tensor:
    """The classifier applied at every token, before pooling.  x (B, in_chans, H, W) -> (B, h, w, C).

    The tokens are those of ``forward_features`` (the class token left out), on the (h, w) grid after
    the stages (``pos_embed``'s grid), row-major. ``maps`` chooses the classifier:

        "output":  z_t = head(x_cls) + 0.5 aux_head(x_t)   (default)
        "aux":     z_t = aux_head(x_t)

    VOLO's inference output is ``head(x_cls) + 0.5 max_t aux_head(x_t)``: "output" is that output with
    the max over tokens left out, so its max over the grid, class by class, is the teacher's output. A
    teacher trained on that output (``train`` without token labels) trains its aux head only through the
    max token of each class, and its bare aux map is a poor label: for the bundled teacher the class of
    the averaged aux map is right for 40% of its training images, the "output" map's for 91% (its own
    output: 92%). "aux" is the map of a teacher whose aux head was trained on every token (token
    labeling, or ``--mix-token``).
    """
    if getattr(model, "aux_head", None) is None:
        raise ValueError(f"{type(model).__name__}: dense logits need an aux_head (VOLO with use_aux_head=True)")
    if maps not in DENSE_MAPS:
        raise ValueError(f"maps must be one of {DENSE_MAPS}, got {maps!r}")
    features = model.forward_features(x)  # (B, 1 + N, D), or (B, N, D) without class token
    has_cls = model.post_network is not None
    tokens = features[:, 1:] if has_cls else features
    h, w = model.pos_embed.shape[1:3]
    B, N, _ = tokens.shape
    if N != h * w:
        raise ValueError(f"{type(model).__name__}: expected {h}x{w} = {h * w} tokens (the pos_embed grid), "
                         f"got {N}")
    z = model.aux_head(tokens)                                           # (B, N, C)
    if maps == "output":
        if not has_cls:
            raise ValueError(f"{type(model).__name__}: maps='output' needs the class token (post_network); "
                             f"use maps='aux'")
        z = 0.5 * z + model.head(features[:, :1])                       # (B, 1, C) broadcast over tokens
    return z.reshape(B, h, w, -1)


@no_grad()
def relabel(model, dataset, batch_size: int = 256, device: str | None = None, transform=None,
            maps: str = "output") -> np.ndarray:
    """Run a trained ``model`` (on ``device``, None: the default device) densely over every image of
    ``dataset``, in order; the model is left in eval mode.

    dataset: an ArrayDataset (its images un-augmented); transform: the evaluation preprocessing
    (e.g. resize + normalise, as the teacher was evaluated), applied batch by batch on ``device``;
    maps: which classifier runs at every token (``dense_logits``).
    Returns host logits (len(dataset), C, h, w) float16 (see ``dense_logits``); raises ValueError when
    a logit does not fit float16.
    """
    if len(dataset) == 0:
        raise ValueError("relabel: the dataset is empty")
    model.eval()
    loader = DataLoader(dataset, batch_size, transform=transform, device=device or backend.default_device())
    batches = [backend.to_numpy(dense_logits(model, Tensor(x, device=loader.device), maps).data).astype(np.float16)
               for x, _ in loader]
    out = np.concatenate(batches).transpose(0, 3, 1, 2)  # (images, C, h, w)
    if not np.isfinite(out).all():
        raise ValueError("relabel: the teacher's logits are not finite in float16 (|logit| > 65504 or NaN)")
    return np.ascontiguousarray(out)


# --- the file ---------------------------------------------------------------------------------------
def images_checksum(images: np.ndarray) -> int:
    """CRC-32 of the images' bytes (C order): tells whether label maps were made for these images."""
    return zlib.crc32(np.ascontiguousarray(images)) & 0xFFFFFFFF


def save_label_maps(path: str | Path, logits: np.ndarray, dataset, img_size, teacher: dict | None = None,
                    command: str | None = None, topk: int | None = None) -> None:
    """Write label maps to ``path`` (.npz, atomically).

    logits (images, C, h, w): the teacher's per-location logits for the images of ``dataset``, made at
    ``img_size`` (int or (H, W): the size of the evaluation-transformed images the maps cover).
    topk: None keeps all classes when C <= 100 and the top 5 above; k < C keeps the k largest logits
    per location. The entries:
        logits (images, C, h, w) float16                        all classes, or
        topk_values, topk_indices (images, k, h, w) float16 / int32, and
        logsumexp (images, h, w) float32                        log sum_c exp(logit_c) over all C
        meta: JSON {format, num_images, classes, grid, img_size, topk, images_crc32, teacher, command}
    """
    logits = np.asarray(logits)
    if logits.ndim != 4:
        raise ValueError(f"logits must be (images, C, h, w), got shape {logits.shape}")
    n, c, h, w = logits.shape
    if n != len(dataset) or c != len(dataset.classes):
        raise ValueError(f"logits {logits.shape} do not fit the dataset ({len(dataset)} images, "
                         f"{len(dataset.classes)} classes)")
    if topk is None:
        topk = c if c <= ALL_CLASSES_UP_TO else DEFAULT_TOPK
    if topk < 1:
        raise ValueError(f"topk must be >= 1, got {topk}")
    meta = dict(format=LABEL_MAPS_FORMAT, num_images=n, classes=list(dataset.classes), grid=[h, w],
                img_size=list(_pair(img_size)), topk=None if topk >= c else int(topk),
                images_crc32=images_checksum(dataset.images), teacher=teacher or {}, command=command or "")
    if topk >= c:
        entries = dict(logits=logits.astype(np.float16))
    else:
        x = logits.astype(np.float32)
        idx = np.argpartition(-x, topk - 1, axis=1)[:, :topk]
        m = x.max(axis=1, keepdims=True)
        entries = dict(topk_values=np.take_along_axis(x, idx, axis=1).astype(np.float16),
                       topk_indices=idx.astype(np.int32),
                       logsumexp=(m + np.log(np.exp(x - m).sum(axis=1, keepdims=True)))[:, 0])
    entries["meta"] = np.array(json.dumps(meta))
    atomic_write(Path(path), lambda f: np.savez_compressed(f, **entries))


class LabelMaps:
    """Label maps read by ``load_label_maps``.

    Attributes: path, num_images, classes, grid (h, w), img_size (H, W), topk (None: all classes),
    teacher (dict), command (str), images_crc32 (``images_checksum`` of the images), and ``arrays``,
    the entries of the file (``logits``, or ``topk_values``, ``topk_indices``, ``logsumexp``) on the host.
    """

    def __init__(self, path: Path, meta: dict, arrays: dict):
        self.path, self.meta = path, meta
        self.num_images, self.classes = int(meta["num_images"]), list(meta["classes"])
        self.grid, self.img_size = tuple(meta["grid"]), tuple(meta["img_size"])
        self.topk, self.teacher, self.command = meta["topk"], meta["teacher"], meta["command"]
        self.images_crc32 = int(meta["images_crc32"])
        self.arrays = arrays

    def __len__(self) -> int:
        return self.num_images

    def __repr__(self) -> str:
        kept = "all classes" if self.topk is None else f"top-{self.topk} of the classes"
        return (f"LabelMaps({self.path}: {self.num_images} images, {len(self.classes)} classes ({kept}), "
                f"{self.grid[0]}x{self.grid[1]} grid at {self.img_size[0]}x{self.img_size[1]} px)")

    def maps(self, indices, device: str = "cpu", dtype=np.float32):
        """The label maps of images ``indices`` ((B,) integers) as logits (B, C, h, w) on ``device``.

        With top-k storage the classes outside the top k share the rest of each location's
        probability mass evenly: their logit is log((Z - sum_topk e^v) / (C - k)), Z = e^logsumexp, so
        softmax of the map gives the teacher's probabilities for the top k (up to float16 rounding; tlt fills zeros
        instead, which changes them). A location whose top k hold all the mass gets log(1e-30 / (C - k)).
        """
        indices = backend.to_numpy(indices)
        if "logits" in self.arrays:
            out = self.arrays["logits"][indices].astype(dtype)
        else:
            values = self.arrays["topk_values"][indices].astype(np.float32)  # (B, k, h, w)
            lse = self.arrays["logsumexp"][indices][:, None]  # (B, 1, h, w)
            c, k = len(self.classes), values.shape[1]
            rest = np.maximum(1 - np.exp(values - lse).sum(axis=1, keepdims=True), 1e-30)
            out = np.broadcast_to(lse + np.log(rest / (c - k)), (len(indices), c) + self.grid).copy()
            np.put_along_axis(out, self.arrays["topk_indices"][indices], values, axis=1)
            out = out.astype(dtype)
        return backend.to_device(out, device)

    def targets(self, indices, boxes, flips, labels, grid: tuple, label_smoothing: float = 0.0,
                device: str = "cpu", sampling_ratio: int | None = None, box_size=None, dtype=np.float32):
        """``dense_targets(self.maps(indices, device, dtype), boxes, flips, labels, grid, self.img_size,
        ...)``."""
        return dense_targets(self.maps(indices, device, dtype), boxes, flips, labels, grid, self.img_size,
                             label_smoothing, sampling_ratio, box_size)


def load_label_maps(path: str | Path, dataset=None, *, img_size=None, grid=None) -> LabelMaps:
    """Read label maps and check that they fit; every refusal is a ValueError naming the file.

    dataset (an ArrayDataset): the image count, the class names and the images' checksum must match.
    img_size (int or (H, W)): the size of the images the training crops come from must be the one the
    maps were made at. grid (h, w): the maps' grid, when the caller needs a particular one.
    Truncated or corrupt files, missing entries and arrays that disagree with the metadata are refused.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"no label-map file at {path}")
    maps = read_npz(path, LABEL_MAPS_FORMAT, "label-map file", lambda meta, arrays: LabelMaps(path, meta, arrays))
    _check_arrays(maps)
    problems = []
    if dataset is not None:
        if maps.num_images != len(dataset):
            problems.append(f"made for {maps.num_images} images, the dataset has {len(dataset)}")
        elif maps.images_crc32 != images_checksum(dataset.images):
            problems.append("made for other images than the dataset's (their checksum differs: another "
                            "dataset, order or subset)")
        if maps.classes != list(dataset.classes):
            problems.append(f"made for {len(maps.classes)} classes {maps.classes}, the dataset has "
                            f"{len(dataset.classes)} {list(dataset.classes)}")
    if img_size is not None and maps.img_size != _pair(img_size):
        problems.append(f"made at img_size {_hw(maps.img_size)}, expected {_hw(_pair(img_size))}")
    if grid is not None and maps.grid != _pair(grid):
        problems.append(f"grid {_hw(maps.grid)}, expected {_hw(_pair(grid))}")
    if problems:
        raise ValueError(f"{path}: label maps do not fit: " + "; ".join(problems))
    return maps


def _check_arrays(maps: LabelMaps) -> None:
    """The arrays must have the shapes and dtypes the metadata promises."""
    n, c, (h, w), k = maps.num_images, len(maps.classes), maps.grid, maps.topk
    if k is None:
        expected = {"logits": ((n, c, h, w), np.float16)}
    else:
        expected = {"topk_values": ((n, k, h, w), np.float16), "topk_indices": ((n, k, h, w), np.int32),
                    "logsumexp": ((n, h, w), np.float32)}
    for name, (shape, dtype) in expected.items():
        a = maps.arrays.get(name)
        if a is None or a.shape != shape or a.dtype != dtype:
            got = "missing" if a is None else f"{a.dtype} {a.shape}"
            raise ValueError(f"{maps.path}: entry {name!r} should be {np.dtype(dtype)} {shape} "
                             f"(from the metadata), got {got}")
    if k is not None and not ((maps.arrays["topk_indices"] >= 0) & (maps.arrays["topk_indices"] < c)).all():
        raise ValueError(f"{maps.path}: topk_indices outside [0, {c})")
    for name in ("logits", "topk_values", "logsumexp"):
        if name in expected and not np.isfinite(maps.arrays[name]).all():
            raise ValueError(f"{maps.path}: entry {name!r} holds non-finite values (corrupt?)")


def _pair(size) -> tuple:
    return (int(size), int(size)) if isinstance(size, (int, np.integer)) else tuple(int(s) for s in size)


def _hw(size: tuple) -> str:
    return f"{size[0]}x{size[1]}"


# --- targets that follow the augmentation -----------------------------------------------------------
def crop_boxes(top, left, size, padding: int = 0) -> np.ndarray:
    """The boxes (B, 4) = (x1, y1, x2, y2) in image pixels of ``RandomCrop(size, padding)`` crops.

    RandomCrop pads by ``padding`` and takes rows top:top+h and columns left:left+w of the padded
    image, so the crop covers x in [left - padding, left - padding + w) and y in [top - padding, ...).
    """
    h, w = _pair(size)
    x1 = np.asarray(left, np.float64) - padding
    y1 = np.asarray(top, np.float64) - padding
    return np.stack([x1, y1, x1 + w, y1 + h], axis=-1)


def _roi_weights(start, end, n_out: int, size: int, sampling_ratio: int, xp, dtype):
    """The ROI-align of one axis as a matrix: (B, n_out, size).

    Bin i of box b spans [start_b + i d_b, start_b + (i+1) d_b), d_b = (end_b - start_b) / n_out, in
    map units; it averages ``sampling_ratio`` samples at the bin's evenly spaced points
    (start_b + (i + (s + 0.5) / sampling_ratio) d_b). Each sample reads the map by linear
    interpolation between the two nearest cell centres: at u (cell-centre coordinate, the cell index
    = u - 0.5 in map units), cell floor(u) weighs 1 - frac(u) and the next cell frac(u); u is clamped
    to [0, size - 1], so samples beyond the map read the border cells.
    """
    B = start.shape[0]
    steps = (xp.arange(n_out, dtype=dtype)[:, None]
             + (xp.arange(sampling_ratio, dtype=dtype) + 0.5) / sampling_ratio).reshape(-1)  # (n_out * sr,)
    u = start[:, None] + ((end - start) / n_out)[:, None] * steps - 0.5  # (B, n_out * sr)
    u = xp.clip(u, 0, size - 1)
    lo = xp.floor(u)
    frac = (u - lo)[..., None]
    cells = xp.arange(size, dtype=dtype)
    w = (1 - frac) * (lo[..., None] == cells) + frac * (lo[..., None] + 1 == cells)  # (B, n_out * sr, size)
    return w.reshape(B, n_out, sampling_ratio, size).mean(axis=2)


def _roi_matrices(boxes, in_hw: tuple, out_hw: tuple, sampling_ratio: int | None, xp, dtype,
                  box_hw: tuple | None = None):
    """(Wy (B, Ht, h), Wx (B, Wt, w)) with roi_align(input)[b, c] = Wy[b] @ input[b, c] @ Wx[b]^T.

    Bilinear interpolation on a grid of sample points is separable (a linear interpolation along y
    times one along x), and so is the average over a bin's samples: ROI-align is one matrix per axis.
    sampling_ratio None: ceil(box side / output side) samples per bin and axis, the largest over the
    batch (torchvision's adaptive choice, per box there; the same when the boxes have one size); that
    needs host boxes, or ``box_hw`` (the boxes' common height and width, in input cells). Boxes on
    xp's device (a GPU batch's crops) are used there without a copy.
    """
    if backend.get_array_module(boxes) is np:  # host boxes (copied once to a GPU by xp.asarray below)
        boxes = np.asarray(boxes, np.float64)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"boxes must be (B, 4) = (x1, y1, x2, y2), got shape {boxes.shape}")
    (h, w), (ht, wt) = in_hw, out_hw
    if sampling_ratio is None and box_hw is not None:
        sr_y, sr_x = max(1, math.ceil(box_hw[0] / ht)), max(1, math.ceil(box_hw[1] / wt))
    elif sampling_ratio is None and not isinstance(boxes, np.ndarray):
        raise ValueError("sampling_ratio=None (adaptive) reads the box sizes on the host: with boxes on the "
                         "device, pass sampling_ratio or box_size (the crops' common size)")
    elif sampling_ratio is None:
        sr_y = max(1, math.ceil(float((boxes[:, 3] - boxes[:, 1]).max(initial=0)) / ht))
        sr_x = max(1, math.ceil(float((boxes[:, 2] - boxes[:, 0]).max(initial=0)) / wt))
    elif sampling_ratio < 1:
        raise ValueError(f"sampling_ratio must be >= 1 (or None: adaptive), got {sampling_ratio}")
    else:
        sr_y = sr_x = int(sampling_ratio)
    b = xp.asarray(boxes, dtype=dtype)
    return (_roi_weights(b[:, 1], b[:, 3], ht, h, sr_y, xp, dtype),
            _roi_weights(b[:, 0], b[:, 2], wt, w, sr_x, xp, dtype))


def _apply(wy, maps, wx):
    """(B, Ht, h), (B, C, h, w), (B, Wt, w) -> (B, C, Ht, Wt): Wy @ map @ Wx^T per sample and class."""
    return wy[:, None] @ maps @ wx.transpose(0, 2, 1)[:, None]


def roi_align(input, boxes, output_size, sampling_ratio: int | None = None):
    """Average of bilinear samples over each bin of each box: (B, C, h, w) -> (B, C, Ht, Wt).

    input: an array (B, C, h, w) (NumPy or CuPy); boxes (B, 4) = (x1, y1, x2, y2) in input cells
    (host array), one box per sample; output_size: Ht or (Ht, Wt). Output bin (i, j) of box b covers
    y in [y1 + i (y2-y1)/Ht, ...), x in [x1 + j (x2-x1)/Wt, ...) and averages sampling_ratio^2 samples
    there (see ``_roi_weights``). This is ``torchvision.ops.roi_align(input, boxes, output_size,
    spatial_scale=1, sampling_ratio, aligned=True)`` for boxes that stay within half a cell of the map
    (torchvision reads zeros further out, here the border cells), with one box per image.
    """
    xp = backend.get_array_module(input)
    if input.ndim != 4:
        raise ValueError(f"roi_align: input must be (B, C, h, w), got shape {input.shape}")
    wy, wx = _roi_matrices(boxes, input.shape[2:], _pair(output_size), sampling_ratio, xp, input.dtype)
    if wy.shape[0] != input.shape[0]:
        raise ValueError(f"roi_align: expected one box per sample ({input.shape[0]}), got {wy.shape[0]}")
    return _apply(wy, input, wx)


def _softmax(z, axis: int):
    xp = backend.get_array_module(z)
    e = xp.exp(z - z.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def dense_targets(maps, boxes, flips, labels, grid, img_size, label_smoothing: float = 0.0,
                  sampling_ratio: int | None = None, box_size=None):
    """The targets of a batch for ``TokenLabelCrossEntropy``: (B, C, 2 + N), N = Ht * Wt.

    maps (B, C, h, w): the teacher's logits over each whole, un-augmented image (``LabelMaps.maps``),
    on the device; boxes (B, 4) = (x1, y1, x2, y2): the crop of each training image in pixels of the
    ``img_size`` (H, W) image the maps cover (``crop_boxes``), on the host or on maps' device (then
    give ``sampling_ratio`` or ``box_size``); flips (B,) bool: the crop was then mirrored left-right;
    labels (B,) integers: the ground truth; grid (Ht, Wt): the student's token grid (aux_logits has
    N = Ht * Wt tokens, row-major).

        z_tok = roi_align(maps, boxes * (w/W, h/H, w/W, h/H), (Ht, Wt)), columns reversed where flipped
        z_cls = roi_align(maps, the same boxes, (1, 1))
        target[:, :, 0]  = onehot(labels) (1 - eps) + eps / C                 ground truth
        target[:, :, 1]  = softmax_c(z_cls) (1 - eps) + eps / C               class target
        target[:, :, 2:] = softmax_c(z_tok) (1 - eps) + eps / C, (B, C, N)    token targets
    with eps = label_smoothing. sampling_ratio None: adaptive (see ``_roi_matrices``), from the boxes
    on the host or, for device boxes, from box_size (H, W): the pixel size all boxes share (a
    RandomCrop's size). Vectorised over the batch (batched matmuls of the ROI-align
    matrices); returned in maps' dtype on maps' device.
    """
    xp = backend.get_array_module(maps)
    if maps.ndim != 4:
        raise ValueError(f"maps must be (B, C, h, w), got shape {maps.shape}")
    B, C, h, w = maps.shape
    if not 0 <= label_smoothing < 1:
        raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
    H, W = _pair(img_size)
    ht, wt = _pair(grid)
    if backend.get_array_module(boxes) is np:  # host boxes; device boxes stay there (a GPU batch's crops)
        boxes = np.asarray(boxes, np.float64)
    if boxes.shape != (B, 4):
        raise ValueError(f"boxes must be ({B}, 4) = (x1, y1, x2, y2), one per map, got shape {boxes.shape}")
    flips = xp.asarray(flips)
    if flips.shape != (B,):
        raise ValueError(f"flips must be ({B},) booleans, one per map, got shape {flips.shape}")
    labels = xp.asarray(labels)
    if labels.shape != (B,):
        raise ValueError(f"labels must be ({B},) class indices, got shape {labels.shape}")
    in_map = boxes.astype(np.float64)  # image pixels -> map cells (scalars: no host array for device boxes)
    in_map[:, 0::2] *= w / W
    in_map[:, 1::2] *= h / H

    box_hw = None if box_size is None else (_pair(box_size)[0] * h / H, _pair(box_size)[1] * w / W)
    wy, wx = _roi_matrices(in_map, (h, w), (ht, wt), sampling_ratio, xp, maps.dtype, box_hw)
    wx = xp.where(flips[:, None, None], wx[:, ::-1], wx)  # a mirrored crop reads its columns right to left
    tokens = _softmax(_apply(wy, maps, wx), axis=1).reshape(B, C, ht * wt)
    wy1, wx1 = _roi_matrices(in_map, (h, w), (1, 1), sampling_ratio, xp, maps.dtype, box_hw)
    cls = _softmax(_apply(wy1, maps, wx1).reshape(B, C), axis=1)
    truth = (labels[:, None] == xp.arange(C)).astype(maps.dtype)
    out = xp.concatenate([truth[:, :, None], cls[:, :, None], tokens], axis=2)
    return out * (1 - label_smoothing) + label_smoothing / C
