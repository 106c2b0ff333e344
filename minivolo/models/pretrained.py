"""Checkpoints in, checkpoints out: the one place that reads weights files.

    load_pretrained(model, path)   .pth / .pth.tar / .pt (via torch), .safetensors, .npz -> model
    read_state_dict(path)          the same files -> {name: numpy array}
    save_npz(model, path)          model.state_dict() -> .npz (no pickle; reads back without torch)

Official VOLO checkpoints (sail-sg/volo releases) and timm's are PyTorch state_dicts with the very names
minivolo uses, sometimes wrapped in {"state_dict": ...} / {"model": ...} and with a "module." prefix
(DataParallel); both are undone here. A pos_embed for another image size is resized (bicubic).
"""
from __future__ import annotations

import json
import os
import zipfile

import numpy as np

from .. import backend
from .. import functional as F
from ..nn.module import IncompatibleKeys, Module
from ..tensor import Tensor, no_grad

__all__ = ["load_pretrained", "read_state_dict", "read_safetensors", "save_npz"]

TORCH_SUFFIXES = (".pth", ".pth.tar", ".pt", ".tar", ".bin")
CONTAINER_KEYS = ("state_dict", "model", "state_dict_ema")

# safetensors dtype -> little-endian NumPy dtype (BF16 is widened to float32 by hand: NumPy has no bf16)
_SAFETENSORS_DTYPES = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "BF16": "<u2", "I64": "<i8", "I32": "<i4",
                       "I16": "<i2", "I8": "i1", "U8": "u1", "BOOL": "?"}


def read_safetensors(path: str) -> dict:
    """Parse a .safetensors file without the safetensors package.

    Layout: 8-byte little-endian header length n, then n bytes of JSON
    {name: {"dtype": "F32", "shape": [...], "data_offsets": [begin, end]}, "__metadata__": {...}},
    then the raw little-endian tensor bytes, offsets relative to the end of the header.
    """
    with open(path, "rb") as f:
        blob = f.read()
    if len(blob) < 8:
        raise ValueError(f"{path}: not a safetensors file (only {len(blob)} bytes)")
    n = int.from_bytes(blob[:8], "little")
    if n > len(blob) - 8:
        raise ValueError(f"{path}: truncated or not a safetensors file (header of {n} bytes, "
                         f"file of {len(blob)} bytes)")
    try:
        header = json.loads(blob[8:8 + n])
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: corrupt safetensors header ({e})") from None
    if not isinstance(header, dict):
        raise ValueError(f"{path}: corrupt safetensors header (expected a JSON object, got "
                         f"{type(header).__name__})")
    data = memoryview(blob)[8 + n:]
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype = info.get("dtype") if isinstance(info, dict) else None
        if dtype not in _SAFETENSORS_DTYPES:
            raise ValueError(f"{path}: tensor {name!r} has unsupported dtype {dtype!r} "
                             f"(supported: {', '.join(_SAFETENSORS_DTYPES)})")
        np_dtype = np.dtype(_SAFETENSORS_DTYPES[dtype])
        shape, offsets = info.get("shape"), info.get("data_offsets")
        if not (isinstance(shape, list) and all(isinstance(s, int) and s >= 0 for s in shape)
                and isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)):
            raise ValueError(f"{path}: corrupt safetensors header: tensor {name!r} needs \"shape\" (a list of "
                             f"sizes >= 0) and \"data_offsets\" ([begin, end]), got {info}")
        shape, (begin, end) = tuple(shape), offsets
        if not 0 <= begin <= end <= len(data) or end - begin != int(np.prod(shape)) * np_dtype.itemsize:
            raise ValueError(f"{path}: truncated or corrupt: tensor {name!r} {dtype}{list(shape)} claims "
                             f"bytes {begin}..{end} of {len(data)}")
        arr = np.frombuffer(data[begin:end], dtype=np_dtype).reshape(shape)
        if dtype == "BF16":  # the top 16 bits of a float32
            arr = (arr.astype(np.uint32) << 16).view(np.float32)
        out[name] = arr.astype(arr.dtype.newbyteorder("="), copy=True)
    return out


def _read_torch(path: str) -> dict:
    try:
        import torch
    except ImportError:
        raise ImportError(f"reading {path} needs PyTorch (pip install torch); or convert the checkpoint "
                          "to .npz or .safetensors once on a machine that has it") from None
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, bad pickle, ...: torch raises many kinds
        raise ValueError(f"{path}: could not read the PyTorch checkpoint ({type(e).__name__}: {e})") from None

    def to_numpy(value):
        if isinstance(value, torch.Tensor):
            value = value.detach().cpu()
            return (value.float() if value.dtype == torch.bfloat16 else value).numpy()
        if isinstance(value, dict):
            return {k: to_numpy(v) for k, v in value.items()}
        return value
    return to_numpy(checkpoint)


def _read_npz(path: str) -> dict:
    try:
        with np.load(path, allow_pickle=False) as archive:
            return {k: archive[k] for k in archive.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as e:
        raise ValueError(f"{path}: could not read the .npz file ({type(e).__name__}: {e})") from None


def read_state_dict(path: str) -> dict:
    """{name: numpy array} from a checkpoint file, containers and "module." prefixes removed."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    lower = path.lower()
    if lower.endswith(".safetensors"):
        state = read_safetensors(path)
    elif lower.endswith(".npz"):
        state = _read_npz(path)
    elif lower.endswith(TORCH_SUFFIXES):
        state = _read_torch(path)
    else:
        raise ValueError(f"{path}: unknown checkpoint format; expected one of "
                         f"{', '.join(TORCH_SUFFIXES + ('.safetensors', '.npz'))}")
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a state_dict (a dict of name -> tensor), got {type(state).__name__}")
    for key in CONTAINER_KEYS:  # {"state_dict": {...}, "epoch": ..., "optimizer": ...}
        if isinstance(state.get(key), dict):
            state = state[key]
            break
    arrays = {k: v for k, v in state.items() if isinstance(v, np.ndarray)}
    if not arrays:
        raise ValueError(f"{path}: no tensors found (top-level keys: {sorted(state)[:10]})")
    if all(k.startswith("module.") for k in arrays):  # saved from DataParallel / DistributedDataParallel
        arrays = {k[len("module."):]: v for k, v in arrays.items()}
    return arrays


def load_pretrained(model: Module, path: str, strict: bool = True) -> IncompatibleKeys:
    """Load a checkpoint file into ``model`` (resizing pos_embed to the model's grid when they differ).

    Wrong shapes, and with ``strict`` missing or unexpected keys, raise ``ValueError`` listing them all.
    """
    state = read_state_dict(path)
    target = getattr(model, "pos_embed", None)
    pos = state.get("pos_embed")
    if target is not None and pos is not None and pos.ndim == 4 and pos.shape[-1] == target.shape[-1] \
            and pos.shape[1:3] != target.shape[1:3]:
        state["pos_embed"] = resize_pos_embed(pos, tuple(target.shape[1:3]))
    return model.load_state_dict(state, strict=strict)


def save_npz(model: Module, path: str) -> None:
    """Write ``model.state_dict()`` to an uncompressed .npz (read back by ``load_pretrained``)."""
    np.savez(path, **model.state_dict())


def resize_pos_embed(pos_embed, new_hw: tuple):
    """Resample a (1, H, W, C) position embedding to (1, new_h, new_w, C), bicubic, align_corners=False
    (as F.interpolate / torch). Takes and returns a host or device array."""
    pos = Tensor(pos_embed, device=backend.device_of(pos_embed))
    if pos.ndim != 4 or pos.shape[0] != 1:
        raise ValueError(f"pos_embed must have shape (1, H, W, C), got {tuple(pos.shape)}")
    if tuple(pos.shape[1:3]) == tuple(new_hw):
        return pos.data
    with no_grad():
        out = F.interpolate(pos.permute(0, 3, 1, 2), size=tuple(new_hw), mode="bicubic", align_corners=False)
    return out.xp.ascontiguousarray(out.permute(0, 2, 3, 1).data)
