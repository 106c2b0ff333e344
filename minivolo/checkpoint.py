"""Checkpoints and atomic file writes: the one writer and the one reader of minivolo's checkpoints.

    atomic_write(path, write)  -> ``write(f)`` into a temporary file, fsync, rename over ``path``
    save_checkpoint(path, tree) / load_checkpoint(path)

Every file is written atomically (a temporary file in the same folder, fsync, ``os.replace``): a crash
mid-write leaves the previous version intact.

A checkpoint is an ``.npz`` file that loads with ``allow_pickle=False``: every array is an entry
(``model/<state_dict name>``, ``optimizer/state/<i>/<name>``), everything else (epoch, config, metrics,
scheduler, class names, normalisation) is one JSON string in the entry ``meta``, where arrays
appear as ``{"__array__": "<entry name>"}``; ``meta["format"]`` is ``CHECKPOINT_FORMAT``.
"""
from __future__ import annotations

import json
import os
import zipfile
import zlib
from pathlib import Path
from typing import Callable

import numpy as np

from . import backend

CHECKPOINT_FORMAT = "minivolo-checkpoint-1"


def atomic_write(path: Path, write: Callable) -> None:
    """``write(f)`` into a temporary file next to ``path``, fsync it, then rename it over ``path``."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text(path: Path, text: str) -> None:
    """``text`` into ``path`` as UTF-8, atomically."""
    atomic_write(path, lambda f: f.write(text.encode()))


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    raise TypeError(f"cannot store {type(o).__name__} in a checkpoint")


def _pack(tree, name: str, arrays: dict):
    """Move the arrays of a nested dict/list into ``arrays`` (entry -> host array); JSON-able rest."""
    if backend.is_array(tree):
        arrays[name] = backend.to_numpy(tree)
        return {"__array__": name}
    if isinstance(tree, dict):
        return {str(k): _pack(v, f"{name}/{k}" if name else str(k), arrays) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return [_pack(v, f"{name}/{i}" if name else str(i), arrays) for i, v in enumerate(tree)]
    return tree


def _unpack(tree, arrays: dict):
    if isinstance(tree, dict):
        if set(tree) == {"__array__"}:
            return arrays[tree["__array__"]]
        return {k: _unpack(v, arrays) for k, v in tree.items()}
    if isinstance(tree, list):
        return [_unpack(v, arrays) for v in tree]
    return tree


def save_checkpoint(path: str | Path, tree: dict) -> None:
    """Write ``tree`` (nested dicts/lists of arrays and JSON values) as an ``.npz``, atomically."""
    arrays: dict = {}
    meta = _pack({"format": CHECKPOINT_FORMAT, **tree}, "", arrays)
    entries = {**arrays, "meta": np.array(json.dumps(meta, default=_json_default))}
    atomic_write(Path(path), lambda f: np.savez(f, **entries))


def load_checkpoint(path: str | Path) -> dict:
    """The tree saved by ``save_checkpoint``; ``path`` may be a run directory (its ``last.npz``).

    Raises FileNotFoundError when there is no such file, ValueError naming the file when it is
    truncated, corrupt or not a minivolo checkpoint.
    """
    path = Path(path).expanduser()
    if path.is_dir():
        path = path / "last.npz"
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    return read_npz(path, CHECKPOINT_FORMAT, "minivolo checkpoint", _unpack)


def read_npz(path: Path, format: str, what: str, build: Callable[[dict, dict], object]):
    """``build(meta, arrays)`` of an .npz written with a JSON ``meta`` entry of the given ``format``
    (checkpoints, label maps); a truncated, corrupt or foreign file is a ValueError naming it."""
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        meta = json.loads(str(arrays.pop("meta")[()]))
        if not isinstance(meta, dict) or meta.get("format") != format:
            raise ValueError(f"expected format {format!r}")
        return build(meta, arrays)
    except (zipfile.BadZipFile, zlib.error, EOFError, KeyError, ValueError, OSError, TypeError) as e:
        raise ValueError(f"{path}: not a readable {what} (truncated or corrupt?): "
                         f"{type(e).__name__}: {e}") from e
