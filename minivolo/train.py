"""The training loop and its metrics; evaluation and prediction from a checkpoint.

    train(config, resume=None, **overrides)  -> {"run_dir", "metrics", "best_acc", "model"}
    load_checkpoint(path)                    -> the saved tree (the one reader of checkpoints)
    evaluate(checkpoint, ...)                -> accuracy, loss, confusion matrix (and confusion.png)
    predict(checkpoint, images, topk)        -> top-k classes with probabilities per image

A run lives in ``<out>/<name>/``: ``config.json``, ``metrics.csv`` (one row per epoch), ``curves.png``,
``last.npz`` (after every epoch) and ``best.npz`` (best test accuracy so far), each written atomically
(``checkpoint.py`` writes and reads the files; ``plots.py`` draws the figures).

What a step optimises (``_loss``; TrainConfig's fields):

    default            cross-entropy with label smoothing on ``model(x)`` (timm's recipe without a teacher)
    mix_token          ``model.forward_train(x)`` with MixToken (a box of tokens pasted from the batch
                       flipped, lam ~ Beta(1, 1) per batch) and ``TokenLabelCrossEntropy(dense_weight)``
                       on smoothed one-hot targets: every token takes its image's label
    token_labels=PATH  ``forward_train`` and ``TokenLabelCrossEntropy`` on dense targets: the teacher's
                       label maps (``python -m minivolo relabel``) ROI-aligned to each crop's token grid,
                       flipped with it, softmax and smoothing (``token_labels.dense_targets``); with or
                       without mix_token (VOLO's recipe is both)
    distill=PATH       plain distillation from the same file: soft-target cross-entropy of ``model(x)``
                       against the teacher's class-level target (its map ROI-aligned over the crop to
                       1x1, softmax, smoothing); no dense term, no mix-token

Resuming is bit for bit: everything random in epoch e is a function of (seed, e) alone (the data order
and augmentation, see ``DataLoader``; dropout, drop-path and mix-token boxes, because minivolo's
generators are re-seeded from (seed, e) at the start of each epoch), and the checkpoint restores the
weights, the optimizer moments and the schedule position. Re-seeding, rather than saving the
generators' state, works the same on every device (a GPU generator's state lives on the GPU).
"""
from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from tqdm import tqdm

from . import backend, distributed
from . import functional as F
from .checkpoint import CHECKPOINT_FORMAT, load_checkpoint, save_checkpoint, write_text  # noqa: F401
from .datasets import (ArrayDataset, Compose, DataLoader, Normalize, RandomCrop, RandomHorizontalFlip, Resize,
                       read_image, load_dataset)
from .distributed import DistributedDataParallel
from .losses import TokenLabelCrossEntropy, soft_target_cross_entropy
from .models import create_model
from .nn import SyncBatchNorm
from .optim import AdamW, CosineWarmup, clip_grad_norm_, param_groups_weight_decay
from .plots import plot_confusion, plot_curves
from .tensor import Tensor, no_grad
from .token_labels import LabelMaps, load_label_maps

__all__ = ["TrainConfig", "train", "train_one_epoch", "evaluate", "predict", "model_from_checkpoint",
           "save_checkpoint", "load_checkpoint", "plot_confusion"]

DTYPES = ("float32", "float64")
METRIC_FIELDS = ("epoch", "train_loss", "train_acc", "test_loss", "test_acc", "lr", "seconds")
RESUME_OVERRIDES = ("device", "progress")


# --- the loop --------------------------------------------------------------------------------------
def train(config: TrainConfig | dict | None = None, resume: str | Path | None = None, **overrides) -> dict:
    """Train (or, with ``resume``, continue training) a model; returns a summary.

    config: a TrainConfig, a dict of its fields, or None (the defaults); ``overrides`` set fields on
    top (``train(epochs=3, name="quick")``). resume: a run directory or a checkpoint; the run continues
    in the checkpoint's directory with the saved config, of which only ``device`` and ``progress`` may
    be overridden. Returns ``{"run_dir", "metrics", "best_acc", "model"}``.

    Data-parallel: ``mpiexec -n N python -m minivolo train ...`` (or this function in N processes
    started by an MPI launcher) trains on global batches of N x batch_size, each process on its
    shard (see ``minivolo.distributed``); only process 0 writes files and prints. A run resumes only
    with the number of processes it was started with.
    """
    distributed.init()
    ckpt = None
    if resume is not None:
        if config is not None or set(overrides) - set(RESUME_OVERRIDES):
            changed = ", ".join(sorted(set(overrides) - set(RESUME_OVERRIDES))) or "config"
            raise ValueError(f"a resumed run uses its saved config; only {', '.join(RESUME_OVERRIDES)} "
                             f"may be changed, got {changed}")
        ckpt = load_checkpoint(resume)
        config = saved_config(ckpt, **overrides).validate()
        run_dir = Path(resume) if Path(resume).is_dir() else Path(resume).parent
    else:
        fields = dataclasses.asdict(config) if isinstance(config, TrainConfig) else dict(config or {})
        unknown = set(fields) | set(overrides)
        unknown -= {f.name for f in dataclasses.fields(TrainConfig)}
        if unknown:
            raise ValueError(f"unknown config field(s): {', '.join(sorted(unknown))}")
        config = TrainConfig(**{**fields, **overrides}).validate()
        if config.name is None:  # process 0's clock names the run
            config.name = distributed.broadcast_object(f"{config.model}-{time.strftime('%Y%m%d-%H%M%S')}")
        run_dir = Path(config.out) / config.name
        if (run_dir / "last.npz").exists():
            raise ValueError(f"{run_dir} already holds a run (last.npz); resume it or choose another name")
    return _fit(config, run_dir, ckpt)


def _fit(config: TrainConfig, run_dir: Path, ckpt: dict | None) -> dict:
    world, rank, main = distributed.world_size(), distributed.rank(), distributed.is_main()
    saved_world = ckpt.get("world_size", 1) if ckpt is not None else world
    if saved_world != world:
        raise ValueError(f"{run_dir} was trained by {saved_world} process(es), and its batches and random "
                         f"draws are split that way: resume it with `mpiexec -n {saved_world}` "
                         f"(this run has {world})")
    backend.manual_seed(config.seed)
    full_train_set = load_dataset(config.dataset, config.data_dir, train=True)
    train_set = _subset(full_train_set, config.max_train)
    test_set = _subset(load_dataset(config.dataset, config.data_dir, train=False), config.max_test)
    if len(train_set) < config.batch_size * world:
        processes = f" x {world} processes" if world > 1 else ""
        raise ValueError(f"the training set has {len(train_set)} images, fewer than one batch "
                         f"(batch_size {config.batch_size}{processes})")
    classes, in_chans = train_set.classes, train_set.images.shape[1]

    model = _build_model(config, len(classes), in_chans).to(config.device)
    if ckpt is None:
        pixels = train_set.images.reshape(len(train_set), in_chans, -1) / 255.0
        data = dict(classes=classes, in_chans=int(in_chans), img_size=_model_img_size(model, config),
                    mean=[float(m) for m in pixels.mean(axis=(0, 2))],
                    std=[float(s) for s in pixels.std(axis=(0, 2))])
    else:
        data = ckpt["data"]
        model.load_state_dict(ckpt["model"])
    label_maps = _load_label_maps(config, model, full_train_set, data["img_size"])  # also when resuming

    ddp = DistributedDataParallel(model)  # rank 0's weights everywhere; gradient buckets
    train_loader = DataLoader(train_set, config.batch_size, shuffle=True, drop_last=True, seed=config.seed,
                              transform=_train_transform(data, config.augment, config.crop_padding), device=config.device,
                              num_replicas=world, rank=rank, return_params=label_maps is not None)
    test_loader = DataLoader(test_set, config.eval_batch_size, transform=_eval_transform(data),
                             device=config.device, num_replicas=world, rank=rank, pad=False)
    steps = len(train_loader)
    optimizer = AdamW(param_groups_weight_decay(model, config.weight_decay), lr=config.lr)
    scheduler = CosineWarmup(optimizer, total_steps=config.epochs * steps,
                             warmup_steps=min(round(config.warmup_epochs * steps), config.epochs * steps),
                             min_lr=config.min_lr, warmup_start_lr=config.warmup_lr)
    metrics: list[dict] = []
    if ckpt is not None:
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        metrics = ckpt["metrics"]
    elif main:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_text(run_dir / "config.json", json.dumps(dataclasses.asdict(config), indent=2) + "\n")
    best_acc = max((m["test_acc"] for m in metrics), default=-math.inf)

    show = config.progress and main
    if show:
        print(f"{config.model}: {model.num_parameters():,} parameters; {len(train_set)} train / "
              f"{len(test_set)} test images of {data['img_size']}x{data['img_size']}; run dir {run_dir}"
              + (f"; {world} processes x batch {config.batch_size}" if world > 1 else ""))
    for epoch in range(len(metrics), config.epochs):
        start = time.perf_counter()
        train_loader.set_epoch(epoch)
        backend.manual_seed(int(np.random.SeedSequence([config.seed, epoch]).generate_state(1)[0]))
        train_loss, train_acc, speed = train_one_epoch(ddp, train_loader, optimizer, scheduler, config, epoch,
                                                       label_maps=label_maps)
        test_loss, test_acc, _ = _evaluate_loader(model, test_loader, len(classes))
        metrics.append(dict(epoch=epoch + 1, train_loss=train_loss, train_acc=train_acc, test_loss=test_loss,
                            test_acc=test_acc, lr=optimizer.param_groups[0]["lr"],
                            seconds=round(time.perf_counter() - start, 3)))
        improved, best_acc = test_acc > best_acc, max(best_acc, test_acc)
        if main:  # the processes hold the same weights and metrics: process 0 writes them
            state = dict(epoch=epoch + 1, config=dataclasses.asdict(config), data=data, metrics=metrics,
                         model=model.state_dict(), optimizer=optimizer.state_dict(),
                         scheduler=scheduler.state_dict(), world_size=world)
            save_checkpoint(run_dir / "last.npz", state)
            if improved:
                save_checkpoint(run_dir / "best.npz", state)
            _write_metrics(run_dir, metrics)
            plot_curves(run_dir, metrics)
        if show:
            m = metrics[-1]
            print(f"epoch {m['epoch']:3d}/{config.epochs}  train loss {train_loss:.4f} acc {train_acc:.4f}  "
                  f"test loss {test_loss:.4f} acc {test_acc:.4f}  lr {m['lr']:.2e}  "
                  f"{m['seconds']:.1f}s (training {speed:.0f} img/s)")
    return dict(run_dir=run_dir, metrics=metrics, best_acc=best_acc, model=model)


# --- one epoch and evaluation ----------------------------------------------------------------------
def _loss(model, x: Tensor, y, config: TrainConfig, params: dict | None = None,
          label_maps: LabelMaps | None = None) -> tuple[Tensor, Tensor]:
    """(logits (B, C) for the training accuracy, the loss) of a batch, by the mode of ``config``:

    - default: cross-entropy with label smoothing on ``model(x)`` (for VOLO ``head(cls) + 0.5 max aux``).
    - ``token_labels`` and/or ``mix_token``: ``cls, aux, bbox = model.forward_train(x)`` (the model draws
      the mix-token box) and ``TokenLabelCrossEntropy(dense_weight)((cls, aux, bbox), target)``, target
      the dense targets of the batch's crops (B, C, 2 + N) with token labels, else the smoothed one-hot
      labels (B, C), taken by every token. The class target is mixed by the box's lam inside the loss.
    - ``distill``: ``soft_target_cross_entropy(model(x), t)``, t the teacher's class target of each crop
      (column 1 of ``dense_targets``, smoothed).
    The logits returned are ``cls`` in the forward_train modes (with mix-token, of the mixed images).
    All targets are built on x's device from ``params`` (indices on the host; boxes, flips on the
    device): no wait. The label maps of the batch cross to the device once.
    """
    eps = config.label_smoothing
    if label_maps is not None:  # the crops' targets; all crops share x's size (box_size: no host read)
        grid = (1, 1) if config.distill else _token_grid(_unwrap(model))
        target = label_maps.targets(params["indices"], params["boxes"], params["flips"], y, grid, eps,
                                    x.device, box_size=x.shape[2:], dtype=x.dtype)
    if config.distill:
        logits = model(x)
        return logits, soft_target_cross_entropy(logits, Tensor(target[:, :, 1], device=x.device))
    if config.mix_token or config.token_labels:
        if label_maps is None:  # smoothed one-hot (B, C), built on the device (no host array, no sync)
            C = _unwrap(model).num_classes
            target = (y[:, None] == x.xp.arange(C)).astype(x.dtype) * (1 - eps) + eps / C
        cls, aux, bbox = model.forward_train(x)
        criterion = TokenLabelCrossEntropy(dense_weight=config.dense_weight, cls_weight=1.0)
        return cls, criterion((cls, aux, bbox), target)
    logits = model(x)
    return logits, F.cross_entropy(logits, y, label_smoothing=eps)


def train_one_epoch(model, loader: DataLoader, optimizer, scheduler, config: TrainConfig,
                    epoch: int, label_maps: LabelMaps | None = None) -> tuple[float, float, float]:
    """One pass over ``loader``; returns (mean training loss, training accuracy, images per second).

    The loss is ``_loss``'s for ``config``; with ``label_maps`` (token_labels or distill) the loader must
    yield ``(x, y, params)`` (``DataLoader(return_params=True)``).

    A step never waits for the device: the summed loss and the count of correct predictions stay on it,
    read at most once per progress-bar refresh (tqdm's mininterval) and once at the end.
    ``model`` may be a DistributedDataParallel: its gradients are then averaged over the processes
    after each backward, and the returned numbers are those of the global batches (all processes; the
    progress bar, on process 0, shows its own shard's).
    """
    model.train()
    dtype = _dtype(model)
    sums, seen, start, shown = None, 0, time.perf_counter(), 0.0  # sums: (loss * n, correct), on the device
    show = config.progress and distributed.is_main()
    bar = tqdm(loader, desc=f"epoch {epoch + 1}/{config.epochs}", disable=not show,
               leave=False, dynamic_ncols=True)
    for x, y, *params in bar:
        x = Tensor(x.astype(dtype, copy=False), device=loader.device)
        logits, loss = _loss(model, x, y, config, params[0] if params else None, label_maps)
        optimizer.zero_grad()
        loss.backward()
        if isinstance(model, DistributedDataParallel):
            model.reduce_gradients()  # the mean over the processes (torch does this inside backward)
        if config.clip_grad is not None:
            clip_grad_norm_(model.parameters(), config.clip_grad)
        optimizer.step()
        scheduler.step()
        n = len(y)
        batch = logits.xp.stack([loss.data.astype(np.float64) * n,
                                 (logits.data.argmax(axis=1) == y).sum().astype(np.float64)])
        sums = batch if sums is None else sums + batch
        seen += n
        if show and time.perf_counter() - shown >= bar.mininterval:
            shown = time.perf_counter()
            total_loss, correct = backend.to_numpy(sums)
            bar.set_postfix(loss=f"{total_loss / seen:.4f}", acc=f"{correct / seen:.3f}", refresh=False,
                            img_s=f"{seen * distributed.world_size() / (shown - start):.0f}",
                            lr=f"{optimizer.param_groups[0]['lr']:.2e}")
    total_loss, correct, seen = distributed.all_reduce(np.append(backend.to_numpy(sums), float(seen)))
    return float(total_loss) / seen, float(correct) / seen, seen / (time.perf_counter() - start)


@no_grad()
def _evaluate_loader(model, loader: DataLoader, num_classes: int) -> tuple[float, float, np.ndarray]:
    """(mean cross-entropy, accuracy, confusion matrix (true, predicted)) of ``model`` in eval mode.

    In a data-parallel run each process evaluates its shard; the sums are all-reduced.
    """
    model.eval()
    dtype = _dtype(model)
    total_loss, counts = 0.0, 0  # on the device until the end: no wait per batch
    for x, y in loader:
        logits = model(Tensor(x.astype(dtype, copy=False), device=loader.device))
        total_loss = total_loss + F.cross_entropy(logits, y).data.astype(np.float64) * len(y)
        counts = counts + logits.xp.bincount(y * num_classes + logits.data.argmax(axis=1),
                                             minlength=num_classes ** 2)
    confusion = distributed.all_reduce(backend.to_numpy(counts)).reshape(num_classes, num_classes)
    total_loss = float(distributed.all_reduce(backend.to_numpy(total_loss).reshape(1))[0])
    n = int(confusion.sum())
    return total_loss / n, float(np.trace(confusion)) / n, confusion


def _dtype(model) -> np.dtype:
    """The floating dtype of the model's parameters (the inputs are cast to it)."""
    return next(iter(model.parameters())).dtype


# --- the configuration ---------------------------------------------------------------------------
@dataclasses.dataclass
class TrainConfig:
    """Everything a run depends on; saved in ``config.json`` and in every checkpoint.

    The defaults train ``volo_tiny`` on the bundled Fashion-MNIST subset (10,000 train / 2,000 test
    images, 28x28 padded to the model's 32x32) with the plain loss and a random crop of padding 1 + flip:
    88.25% test accuracy in 20 epochs at seed 0, 13.6 min on 2 idle cores (the README gives three seeds).
    The README's ablations (seed 0 unless said; 20 epochs): crop padding 2 (the previous default) 87.15%,
    padding 0 (flip only) 86.7% (train 96%: overfitting), padding 1 at batch 32 86.85%; 12 epochs, 3 seeds:
    MixToken, token labels and distillation from a 40-epoch teacher all at or below the plain loss.
    Earlier: 10 epochs at lr 2e-3 reach 82.4%, 20 at 2e-3 84.1%, 15 at 1e-3 85.9%.
    """
    model: str = "volo_tiny"
    dataset: str = "fashion-mnist-subset"
    data_dir: str | None = None        # None: the dataset's default location
    img_size: int | None = None        # None: the model's default; images are padded/cropped to it
    epochs: int = 20
    batch_size: int = 64               # per process: mpiexec -n N trains on global batches of N x this
    lr: float = 1e-3                   # peak learning rate of AdamW, reached after the warm-up
    min_lr: float = 1e-5               # end of the cosine
    warmup_lr: float = 1e-6            # start of the warm-up (the official recipe's --warmup-lr)
    warmup_epochs: float = 1.0
    weight_decay: float = 0.05         # not on biases, norms, pos_embed, cls_token
    label_smoothing: float = 0.1
    drop_path: float = 0.0
    clip_grad: float | None = None     # max gradient norm; None: no clipping
    augment: bool = True               # random crop (padding crop_padding) + horizontal flip
    crop_padding: int = 1              # the random crop's zero padding in pixels; 0: no crop (flip only)
    seed: int = 0
    device: str | None = None          # None: $MINIVOLO_DEVICE, "cpu" when unset
    out: str = "runs"
    name: str | None = None            # None: "<model>-<date>-<time>"
    max_train: int | None = None       # use only the first N training images (quick runs, tests)
    max_test: int | None = None
    eval_batch_size: int = 256
    progress: bool = True              # progress bars and one line per epoch on the terminal
    sync_bn: bool = False              # SyncBatchNorm in the stem: batch statistics over all processes
    dtype: str = "float32"             # "float64": parameters and inputs in double precision
    # the VOLO training recipe (see the module docstring); the defaults train with plain cross-entropy
    mix_token: bool = False            # MixToken through forward_train, TokenLabelCrossEntropy
    token_labels: str | None = None    # label maps of a teacher (`python -m minivolo relabel`): token labeling
    distill: str | None = None         # the same kind of file: class-level soft targets only
    dense_weight: float = 0.5          # weight of the dense (per-token) term of TokenLabelCrossEntropy

    def validate(self) -> "TrainConfig":
        positive = dict(epochs=self.epochs, batch_size=self.batch_size, lr=self.lr,
                        eval_batch_size=self.eval_batch_size)
        for key, value in positive.items():
            if not value > 0:
                raise ValueError(f"{key} must be > 0, got {value}")
        for key in ("crop_padding", "weight_decay", "warmup_epochs", "min_lr", "warmup_lr", "drop_path", "dense_weight"):
            if getattr(self, key) < 0:
                raise ValueError(f"{key} must be >= 0, got {getattr(self, key)}")
        if not 0 <= self.label_smoothing < 1:
            raise ValueError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.clip_grad is not None and self.clip_grad <= 0:
            raise ValueError(f"clip_grad must be > 0 (or None for no clipping), got {self.clip_grad}")
        if isinstance(self.crop_padding, bool) or not isinstance(self.crop_padding, (int, np.integer)):
            raise ValueError(f"crop_padding must be an int number of pixels, got {self.crop_padding!r}")
        if self.seed < 0:  # numpy's SeedSequence takes no negative seeds
            raise ValueError(f"seed must be >= 0, got {self.seed}")
        for key in ("max_train", "max_test", "img_size"):
            if getattr(self, key) is not None and getattr(self, key) < 1:
                raise ValueError(f"{key} must be >= 1, got {getattr(self, key)}")
        self.device = self.device or backend.default_device()
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}, got {self.dtype!r}")
        if self.distill is not None and (self.token_labels is not None or self.mix_token):
            other = "token_labels" if self.token_labels is not None else "mix_token"
            raise ValueError(f"distill and {other} do not combine: distill is plain distillation "
                             f"(class-level soft targets on model(x)); token_labels (with or without "
                             f"mix_token) is the dense recipe")
        backend.array_module(self.device)  # raises on an unknown or unavailable device
        return self


# Fields added after runs were saved, with the value those runs used (not the new default): a config
# saved before ``crop_padding`` existed cropped with padding 2.
_SAVED_BEFORE = {"crop_padding": 2}


def saved_config(ckpt: dict, **overrides) -> TrainConfig:
    """The TrainConfig a checkpoint was trained with (``ckpt`` from ``load_checkpoint``), ``overrides`` on top."""
    return TrainConfig(**{**_SAVED_BEFORE, **ckpt["config"], **overrides})


# --- using a trained model -------------------------------------------------------------------------
def evaluate(checkpoint: str | Path, dataset: str | None = None, data_dir: str | None = None,
             device: str | None = None, batch_size: int = 256, out: str | Path | None = None) -> dict:
    """Accuracy, mean loss and confusion matrix of a checkpoint on a test split.

    dataset/data_dir default to the ones the model was trained on. Writes ``confusion.png`` into
    ``out`` (default: the checkpoint's folder). Returns ``{"accuracy", "loss", "confusion", "classes",
    "figure"}``.
    """
    path = Path(checkpoint)
    ckpt = load_checkpoint(path)
    config = saved_config(ckpt)
    dataset = dataset or config.dataset
    data_dir = data_dir if data_dir is not None or dataset != config.dataset else config.data_dir
    test_set = load_dataset(dataset, data_dir, train=False)
    classes = ckpt["data"]["classes"]
    if len(test_set.classes) != len(classes):
        raise ValueError(f"the model was trained on {len(classes)} classes, dataset {dataset!r} has "
                         f"{len(test_set.classes)}")
    if test_set.images.shape[1] != ckpt["data"]["in_chans"]:
        raise ValueError(f"the model expects {ckpt['data']['in_chans']}-channel images, dataset {dataset!r} "
                         f"has {test_set.images.shape[1]} channel(s)")
    device = device or backend.default_device()
    model = model_from_checkpoint(ckpt, device)
    loader = DataLoader(test_set, batch_size, transform=_eval_transform(ckpt["data"]), device=device)
    loss, acc, confusion = _evaluate_loader(model, loader, len(classes))
    figure = Path(out) if out is not None else (path if path.is_dir() else path.parent)
    figure.mkdir(parents=True, exist_ok=True)
    figure = figure / "confusion.png"
    plot_confusion(confusion, classes, figure, f"{config.model} on {dataset}: accuracy {acc:.2%}")
    return dict(accuracy=acc, loss=loss, confusion=confusion, classes=classes, figure=figure)


def _read_input(image, in_chans: int) -> np.ndarray:
    """An image file (png/jpg) or ``.npy`` array, or an array, as (C, H, W) float32 in [0, 1].

    Arrays may be (H, W), (C, H, W) or (H, W, C); uint8 is scaled by 1/255, uint16 by 1/65535, floats
    must lie in [0, 1] (other dtypes and ranges are ValueErrors: guessing the scale would silently give
    wrong predictions). Greyscale is repeated for colour models; colour is averaged for greyscale models.
    """
    name = image if isinstance(image, (str, Path)) else "array"
    if isinstance(image, (str, Path)):
        path = Path(image)
        if not path.is_file():
            raise FileNotFoundError(f"no image file {path}")
        image = np.load(path, allow_pickle=False) if path.suffix.lower() == ".npy" else read_image(path)
    a = np.asarray(image)
    if a.ndim == 2:
        a = a[None]
    elif a.ndim == 3 and a.shape[0] not in (1, 3) and a.shape[-1] in (1, 3):
        a = a.transpose(2, 0, 1)
    if a.ndim != 3 or a.shape[0] not in (1, 3):
        raise ValueError(f"{name}: expected an image (H, W), (C, H, W) or (H, W, C) with 1 or 3 channels, "
                         f"got shape {a.shape}")
    scale = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0}.get(a.dtype)
    if scale is None and a.dtype.kind != "f":
        raise ValueError(f"{name}: expected uint8, uint16 or float pixels, got {a.dtype}")
    if scale is None and a.size and not (a.min() >= 0 and a.max() <= 1):  # NaN fails too
        raise ValueError(f"{name}: expected float pixels in [0, 1], got values in "
                         f"[{a.min():.4g}, {a.max():.4g}] (divide 0..255 images by 255)")
    a = a.astype(np.float32) / (scale or 1.0)
    if a.shape[0] != in_chans:
        a = np.repeat(a, in_chans, axis=0) if a.shape[0] == 1 else a.mean(axis=0, keepdims=True)
    return a


def predict(checkpoint: str | Path, images: Sequence, topk: int = 5,
            device: str | None = None) -> list[list[tuple]]:
    """Top-k ``(class name, probability)`` for each image (file paths or arrays; see ``_read_input``).

    Images are padded/cropped to the model's img_size and normalised as in training.
    """
    ckpt = load_checkpoint(checkpoint)
    data = ckpt["data"]
    arrays = [_read_input(im, data["in_chans"]) for im in images]
    transform = _eval_transform(data)
    x = np.stack([transform(a[None])[0] for a in arrays])  # per image: they may differ in size
    device = device or backend.default_device()
    model = model_from_checkpoint(ckpt, device)
    with no_grad():
        x = Tensor(x.astype(_dtype(model)), device=device)
        probs = backend.to_numpy(F.softmax(model(x), dim=-1).data)
    k = min(topk, probs.shape[1])
    top = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    return [[(data["classes"][j], float(p[j])) for j in row] for p, row in zip(probs, top)]


# --- data ------------------------------------------------------------------------------------------
def _subset(ds: ArrayDataset, n: int | None) -> ArrayDataset:
    return ds if n is None or n >= len(ds) else ArrayDataset(ds.images[:n], ds.labels[:n], ds.classes)


def _eval_transform(data: dict) -> Compose:
    """The preprocessing of evaluation and prediction: pad/crop to img_size, normalise."""
    return Compose([Resize(data["img_size"]), Normalize(data["mean"], data["std"])])


def _train_transform(data: dict, augment: bool, crop_padding: int) -> Compose:
    """Training preprocessing: pad/crop to img_size, a random crop of that size from the image zero-padded
    by ``crop_padding`` pixels (none when 0), a random horizontal flip, normalisation."""
    if not augment:
        return _eval_transform(data)
    size = data["img_size"]
    crop = [RandomCrop(size, padding=crop_padding)] if crop_padding else []
    return Compose([Resize(size), *crop, RandomHorizontalFlip(), Normalize(data["mean"], data["std"])])


# --- model -----------------------------------------------------------------------------------------
def _build_model(config: TrainConfig, num_classes: int, in_chans: int):
    kwargs = dict(num_classes=num_classes, in_chans=in_chans, drop_path_rate=config.drop_path)
    if config.mix_token:
        kwargs["use_mix_token"] = True
    if config.img_size is not None:
        kwargs["img_size"] = config.img_size
    model = create_model(config.model, **kwargs)
    if config.dtype == "float64":
        model.double()
    return SyncBatchNorm.convert_sync_batchnorm(model) if config.sync_bn else model


def _unwrap(model):
    return model.module if isinstance(model, DistributedDataParallel) else model


def _token_grid(model) -> tuple:
    """The (h, w) grid of the aux head's tokens (VOLO: ``pos_embed``'s grid)."""
    return tuple(int(n) for n in model.pos_embed.shape[1:3])


def _load_label_maps(config: TrainConfig, model, train_set: ArrayDataset, img_size: int) -> LabelMaps | None:
    """The label maps of ``config.token_labels`` or ``config.distill``, checked against the full training
    split (count, classes, images), the size the crops come from, and (token labels) the model's token
    grid; None without either (after checking that mix_token has a model it can use). A file is made for
    the full split (``relabel``); with max_train the first max_train maps are used, those of the images
    the run trains on. Every refusal comes before any epoch and before the run folder is made."""
    needs_aux = config.mix_token or config.token_labels is not None
    if needs_aux and (getattr(model, "aux_head", None) is None or getattr(model, "post_network", None) is None):
        raise ValueError(f"mix_token and token_labels train through forward_train: model {config.model!r} "
                         f"needs an aux head and a class token (VOLO with use_aux_head and post_layers)")
    path = config.token_labels or config.distill
    if path is None:
        return None
    grid = _token_grid(model) if config.token_labels is not None else None
    return load_label_maps(path, train_set, img_size=img_size, grid=grid)


def _model_img_size(model, config: TrainConfig) -> int:
    if config.img_size is not None:
        return config.img_size
    size = getattr(model, "img_size", None)
    if size is None:
        raise ValueError(f"model {config.model!r} does not say its img_size; set img_size in the config")
    return int(size[0] if isinstance(size, (tuple, list)) else size)


def model_from_checkpoint(ckpt: dict, device: str | None = None):
    """The trained model saved in ``ckpt`` (from ``load_checkpoint``), in eval mode on ``device`` (None:
    the default device)."""
    config, data = saved_config(ckpt), ckpt["data"]
    model = _build_model(dataclasses.replace(config, sync_bn=False), len(data["classes"]), data["in_chans"])
    model.load_state_dict(ckpt["model"])
    return model.to(device or backend.default_device()).eval()


# --- outputs ---------------------------------------------------------------------------------------
def _write_metrics(run_dir: Path, metrics: list[dict]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=METRIC_FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(metrics)
    write_text(run_dir / "metrics.csv", buf.getvalue())
