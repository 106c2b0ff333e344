"""The command line: ``python -m minivolo train | evaluate | predict | relabel | info | bench``.

Bad option values are argparse errors (usage + message, exit 2); user errors found later (a missing
file, a corrupt checkpoint, an unavailable device) print ``error: ...`` and exit 2 as well.
"""
from __future__ import annotations

import argparse
import contextlib
import sys
from typing import Sequence

from . import backend
from .datasets import DATASETS

EXAMPLES = """examples:
  python -m minivolo train                              # volo_tiny on the bundled Fashion-MNIST subset
  python -m minivolo train --epochs 1 --max-train 512   # a quick smoke run
  python -m minivolo train --resume runs/volo_tiny-20250101-120000
  mpiexec -n 2 python -m minivolo train --batch-size 32 --sync-bn   # data-parallel, global batch 64
  python -m minivolo evaluate runs/NAME/best.npz
  python -m minivolo predict runs/NAME/best.npz shirt.png --topk 3
  python -m minivolo relabel runs/NAME/best.npz --out labels.npz   # a teacher's dense label maps
  python -m minivolo train --mix-token --token-labels labels.npz   # VOLO's recipe: token labeling + MixToken
  python -m minivolo info volo_d1
"""


_ARTICLE = {int: "an"}  # "expected an int", "expected a float"


def _number(kind, bound: str):
    """An argparse type: ``kind(text)``, which must be > 0 (bound ">") or >= 0 (bound ">=")."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {_ARTICLE.get(kind, 'a')} {kind.__name__}, "
                                             f"got {text!r}") from None
        if not (value > 0 if bound == ">" else value >= 0):
            raise argparse.ArgumentTypeError(f"expected a value {bound} 0, got {text}")
        return value
    parse.__name__ = kind.__name__
    return parse


def _positive(kind):
    return _number(kind, ">")


def _non_negative(kind):
    return _number(kind, ">=")


_non_negative_float = _non_negative(float)


def _fraction(text: str) -> float:
    value = _non_negative_float(text)
    if value >= 1:
        raise argparse.ArgumentTypeError(f"expected a value in [0, 1), got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    from .train import TrainConfig
    d = TrainConfig()
    parser = argparse.ArgumentParser(prog="python -m minivolo", epilog=EXAMPLES,
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     description="VOLO (Vision Outlooker) from scratch on NumPy/CuPy.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    t = sub.add_parser("train", help="train a model (or resume a run)",
                       description="Train a model; every option defaults to minivolo.train.TrainConfig. "
                                   "Writes OUT/NAME/{config.json,metrics.csv,curves.png,last.npz,best.npz}.")
    add = t.add_argument  # default None everywhere: unset options keep TrainConfig's value
    add("--model", help=f"model name, see `info` (default: {d.model})")
    add("--dataset", choices=DATASETS, help=f"dataset (default: {d.dataset})")
    add("--data-dir", help="folder of the dataset (default: its standard location; the bundled subset "
                           "for fashion-mnist-subset)")
    add("--img-size", type=_positive(int), help="image size (default: the model's)")
    add("--epochs", type=_positive(int), help=f"epochs (default: {d.epochs})")
    add("--batch-size", type=_positive(int), help=f"batch size per process (default: {d.batch_size})")
    add("--lr", type=_positive(float), help=f"peak AdamW learning rate (default: {d.lr})")
    add("--min-lr", type=_non_negative_float, help=f"learning rate at the end of the cosine (default: {d.min_lr})")
    add("--weight-decay", type=_non_negative_float, help=f"AdamW weight decay (default: {d.weight_decay})")
    add("--warmup-epochs", type=_non_negative_float,
        help=f"linear warm-up length in epochs, may be fractional (default: {d.warmup_epochs})")
    add("--label-smoothing", type=_fraction, help=f"label smoothing (default: {d.label_smoothing})")
    add("--drop-path", type=_fraction, help=f"stochastic depth rate (default: {d.drop_path})")
    add("--clip-grad", type=_positive(float), help="clip the gradient norm to this value (default: off)")
    add("--no-augment", dest="augment", action="store_false", default=None,
        help="no random crop / flip")
    add("--crop-padding", type=_non_negative(int),
        help=f"zero padding of the random crop in pixels, 0: flip only (default: {d.crop_padding})")
    add("--seed", type=int, help=f"random seed (default: {d.seed})")
    add("--device", choices=backend.DEVICES, help="device (default: $MINIVOLO_DEVICE, cpu when unset)")
    add("--out", help=f"folder of the run folders (default: {d.out})")
    add("--name", help="run folder name (default: MODEL-DATE-TIME)")
    add("--max-train", type=_positive(int), help="use only the first N training images")
    add("--max-test", type=_positive(int), help="use only the first N test images")
    add("--resume", metavar="RUN_OR_CKPT",
        help="continue a run (its folder or a checkpoint) with its saved config; only --device may change")
    add("--quiet", dest="progress", action="store_false", default=None, help="no progress output")
    add("--sync-bn", action="store_true", default=None,
        help="data-parallel runs: the stem's BatchNorms use the statistics of all processes (SyncBatchNorm)")
    add("--dtype", choices=("float32", "float64"), help=f"parameters and inputs (default: {d.dtype})")
    add("--mix-token", action="store_true", default=None,
        help="MixToken: train through forward_train with TokenLabelCrossEntropy (default: off)")
    add("--token-labels", metavar="PATH",
        help="token labeling with a teacher's label maps (from `relabel`); combines with --mix-token")
    add("--distill", metavar="PATH",
        help="plain distillation: class-level soft targets from a label-map file (not with --token-labels "
             "or --mix-token)")
    add("--dense-weight", type=_non_negative_float,
        help=f"weight of the per-token loss with --mix-token/--token-labels (default: {d.dense_weight})")

    e = sub.add_parser("evaluate", help="accuracy and confusion matrix of a checkpoint",
                       description="Evaluate a checkpoint on a test split; writes confusion.png next to it.")
    e.add_argument("checkpoint", help="a .npz checkpoint or a run folder (its last.npz)")
    e.add_argument("--dataset", choices=DATASETS, help="dataset (default: the one trained on)")
    e.add_argument("--data-dir", help="folder of the dataset")
    e.add_argument("--device", choices=backend.DEVICES, help="device (default: $MINIVOLO_DEVICE, cpu when unset)")
    e.add_argument("--out", help="folder for confusion.png (default: the checkpoint's folder)")

    p = sub.add_parser("predict", help="classify image files",
                       description="Top-k classes of images (.png/.jpg, or .npy arrays (H,W), (C,H,W) or "
                                   "(H,W,C)); images are padded/cropped to the model's size.")
    p.add_argument("checkpoint", help="a .npz checkpoint or a run folder (its last.npz)")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files")
    p.add_argument("--topk", type=_positive(int), default=5, help="classes to show (default: 5)")
    p.add_argument("--device", choices=backend.DEVICES, help="device (default: $MINIVOLO_DEVICE, cpu when unset)")

    r = sub.add_parser("relabel", help="dense label maps of a teacher (token labeling)",
                       description="Run a trained model (the teacher) densely over the un-augmented training "
                                   "images: head(class token) + 0.5 aux head on every token (--maps), logits "
                                   "stored as float16 (all classes up to 100, the top 5 above) with the teacher "
                                   "and this command.")
    r.add_argument("checkpoint", help="the teacher: a .npz checkpoint or a run folder (its last.npz)")
    r.add_argument("--out", required=True, help="the label-map file to write (.npz)")
    r.add_argument("--dataset", choices=DATASETS, help="dataset (default: the one the teacher was trained on)")
    r.add_argument("--data-dir", help="folder of the dataset")
    r.add_argument("--batch-size", type=_positive(int), default=256, help="batch size (default: 256)")
    r.add_argument("--maps", choices=("output", "aux"), default="output",
                   help="the classifier at every token: 'output' = head(class token) + 0.5 aux_head(token), "
                        "whose max over the tokens is the teacher's output; 'aux' = aux_head(token), for a "
                        "teacher trained with token labels or --mix-token (default: output)")
    r.add_argument("--device", choices=backend.DEVICES, help="device (default: $MINIVOLO_DEVICE, cpu when unset)")
    r.set_defaults(argv=None)  # main() fills it in: the file records the command that made it

    i = sub.add_parser("info", help="parameter counts of the models",
                       description="Parameter count of each model (all models when none is named).")
    i.add_argument("models", nargs="*", metavar="MODEL")

    b = sub.add_parser("bench", help="benchmarks against PyTorch",
                       description="minivolo against torch (timm's VOLO with the same weights) in one process, "
                                   "taking turns; medians of --repeat calls. Run all benchmarks of the device "
                                   "when none is named. Documented command: "
                                   "env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python -m minivolo bench")
    b.add_argument("names", nargs="*", metavar="NAME", help="benchmarks (default: all for the device)")
    b.add_argument("--json", metavar="PATH", help="also write the header and the rows as JSON ('-': stdout, "
                                                  "the table then goes to stderr)")
    b.add_argument("--device", choices=backend.DEVICES, default="cpu", help="device (default: cpu)")
    b.add_argument("--repeat", type=_positive(int), default=5, help="timed calls per benchmark (default: 5)")
    b.add_argument("--threads", type=_positive(int),
                   help="NumPy BLAS and torch threads (default: BLAS as configured, torch on every core)")
    b.add_argument("--quick", action="store_true", help="small variants (a smoke test; figures meaningless)")
    return parser


def _train(args) -> None:
    from .train import train
    options = {k: v for k, v in vars(args).items() if v is not None and k not in ("command", "resume")}
    if args.resume is not None:
        train(resume=args.resume, **options)
    else:
        train(**options)


def _evaluate(args) -> None:
    from .train import evaluate
    r = evaluate(args.checkpoint, args.dataset, args.data_dir, args.device, out=args.out)
    print(f"accuracy {r['accuracy']:.4f} ({r['accuracy']:.2%}), loss {r['loss']:.4f} "
          f"on {int(r['confusion'].sum())} images")
    print(f"confusion matrix: {r['figure']}")


def _predict(args) -> None:
    from .train import predict
    for image, top in zip(args.images, predict(args.checkpoint, args.images, args.topk, args.device)):
        print(f"{image}: " + ", ".join(f"{name} {p:.3f}" for name, p in top))


def _relabel(args) -> None:
    import shlex
    from .datasets import load_dataset
    from .token_labels import relabel, save_label_maps
    from .train import _eval_transform, load_checkpoint, model_from_checkpoint, saved_config
    ckpt = load_checkpoint(args.checkpoint)
    config, data = saved_config(ckpt), ckpt["data"]
    dataset = args.dataset or config.dataset
    data_dir = args.data_dir if args.data_dir is not None or dataset != config.dataset else config.data_dir
    train_set = load_dataset(dataset, data_dir, train=True)
    if len(train_set.classes) != len(data["classes"]) or train_set.images.shape[1] != data["in_chans"]:
        raise ValueError(f"the teacher was trained on {len(data['classes'])} classes of {data['in_chans']}-channel "
                         f"images, dataset {dataset!r} has {len(train_set.classes)} of "
                         f"{train_set.images.shape[1]}-channel images")
    model = model_from_checkpoint(ckpt, args.device)
    logits = relabel(model, train_set, args.batch_size, args.device, transform=_eval_transform(data),
                     maps=args.maps)
    teacher = dict(model=config.model, checkpoint=str(args.checkpoint), epoch=ckpt.get("epoch"),
                   test_acc=max((m["test_acc"] for m in ckpt.get("metrics", [])), default=None), maps=args.maps)
    command = shlex.join(["python", "-m", "minivolo", *map(str, args.argv)])
    save_label_maps(args.out, logits, train_set, data["img_size"], teacher=teacher, command=command)
    n, c, h, w = logits.shape
    print(f"{args.out}: label maps of {n} images, {c} classes on a {h}x{w} grid (teacher {config.model})")


@contextlib.contextmanager
def _skip_init():
    """Build models without drawing their initial weights (torch's ``skip_init`` idea).

    Parameters are allocated with ``empty`` and every ``nn.init`` fill function becomes a no-op while
    this is active; untouched, the arrays cost neither time nor resident memory, so counting
    VOLO-D5's 295M parameters takes milliseconds. Only for shapes and counts: the weights are garbage.
    """
    from .nn import init
    fills = {name: getattr(init, name) for name in init.__all__ if name.endswith("_")}
    try:
        for name in fills:
            setattr(init, name, lambda tensor, *args, **kwargs: tensor)
        yield
    finally:
        for name, fn in fills.items():
            setattr(init, name, fn)


def _info(args) -> None:
    from .models import create_model, list_models
    for name in args.models or list_models():
        with _skip_init():
            n = create_model(name).num_parameters()
        print(f"{name}: {n:,} parameters ({n / 1e6:.1f}M)")


def _bench(args) -> None:
    from . import bench
    bench.run(args.names or None, repeat=args.repeat, device=args.device, threads=args.threads, quick=args.quick,
              json_path=args.json)


COMMANDS = {"train": _train, "evaluate": _evaluate, "predict": _predict, "relabel": _relabel, "info": _info,
            "bench": _bench}


def _check_names(parser, args) -> None:
    """Model names are checked here, not with choices=, so that --help does not import the model zoo."""
    names = args.models if args.command == "info" else ([args.model] if args.command == "train" and args.model
                                                        else [])
    if names:
        from .models import list_models
        known = list_models()
        unknown = [n for n in names if n not in known]
        if unknown:
            parser.error(f"unknown model {unknown[0]!r}; known: {', '.join(known)}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    if "argv" in vars(args):  # a sub-command that records the command line that ran it
        args.argv = argv
    _check_names(parser, args)
    try:
        if getattr(args, "device", None) is not None:
            backend.array_module(args.device)  # raises RuntimeError when the GPU is not usable
    except RuntimeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        COMMANDS[args.command](args)
    except (OSError, ValueError) as e:  # missing files, corrupt checkpoints, bad configs
        from . import distributed
        many = distributed.world_size() > 1
        where = f" (process {distributed.rank()} of {distributed.world_size()})" if many else ""
        print(f"error{where}: {e}", file=sys.stderr)
        if many:
            sys.stderr.flush()
            distributed.abort(2)  # the other processes would wait for this one forever
        return 2
    except KeyboardInterrupt:
        if args.command == "train":
            print("\ninterrupted; `train --resume RUN_DIR` continues from the last finished epoch", file=sys.stderr)
        return 130
    return 0
