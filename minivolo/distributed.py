"""Data-parallel training across processes, on an existing engine: MPI (mpi4py) or NCCL (cupyx).

Every process (a *rank*) holds the whole model and a shard of each global batch; after backward the
gradients are averaged across ranks, so every rank takes the same optimizer step: the step of one
process on the global batch (per-rank batch x world size), as PyTorch's DistributedDataParallel.

    init(backend="auto")        join the process group: "mpi" (mpi4py; CPU, or GPU through host
                                copies), "nccl" (cupyx.distributed, GPU arrays), "auto" (from the
                                environment that mpiexec sets); a plain process is a world of one
    rank(), world_size(), is_main()
    all_reduce(a, op)           the sum (or mean) of ``a`` over all ranks, on every rank
    broadcast(a, root)          rank ``root``'s ``a`` on every rank (broadcast_object: a JSON value)
    barrier()
    DistributedDataParallel     broadcasts rank 0's weights and buffers, averages gradients with one
                                all-reduce per bucket of flattened gradients
    flip_batch(t)               x.flip(0) of the global batch, inside the autograd graph (mix-token)
    global_batch_rows(draw, shape)  per-sample random draws of the global batch (drop-path)

Launch: ``mpiexec -n 2 python train.py``. mpi4py is imported only when a process group with more
than one rank is started, so minivolo imports and runs without it.
"""
from __future__ import annotations

import json
import os
import sys

import numpy as np

from . import backend
from .tensor import Tensor

__all__ = ["init", "rank", "world_size", "is_main", "backend_name", "all_reduce", "broadcast",
           "broadcast_object", "exchange", "barrier", "abort", "global_batch_rows", "flip_batch",
           "DistributedDataParallel", "BACKENDS"]

BACKENDS = ("auto", "mpi", "nccl")
_OPS = ("sum", "mean")
# (rank, size) variables that MPI launchers set: MPICH/Intel MPI (hydra), Open MPI, MVAPICH, PMIx
_MPI_ENV = (("PMI_RANK", "PMI_SIZE"), ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE"),
            ("MV2_COMM_WORLD_RANK", "MV2_COMM_WORLD_SIZE"), ("PMIX_RANK", None))
_LOCAL_RANK_ENV = ("LOCAL_RANK", "MPI_LOCALRANKID", "OMPI_COMM_WORLD_LOCAL_RANK", "MV2_COMM_WORLD_LOCAL_RANK")


# --- process groups ---------------------------------------------------------------------------------
class _Single:
    """A world of one process: every collective is the identity."""
    name, rank, size = "none", 0, 1

    def all_reduce(self, a, op):
        return a

    def broadcast(self, a, root):
        return a

    def exchange(self, a, peer):
        return a

    def barrier(self):
        pass


class _MPI:
    """Collectives through mpi4py on host buffers; device (CuPy) arrays go through explicit host copies."""
    name = "mpi"

    def __init__(self):
        from mpi4py import MPI  # imported here: only a multi-process run needs it
        self.MPI, self.comm = MPI, MPI.COMM_WORLD
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()
        _abort_all_on_uncaught_exception(self.comm.Abort, self.rank, self.size)

    def _staged(self, a, collective):
        """``collective(host array) -> host array`` applied to ``a``, which may live on the GPU."""
        host = np.ascontiguousarray(backend.to_numpy(a))
        out = collective(host)
        return out if backend.get_array_module(a) is np else backend.to_device(out, "cuda")

    def all_reduce(self, a, op):
        def reduce(host):
            out = np.empty_like(host)
            self.comm.Allreduce(host, out, op=self.MPI.SUM)
            return out
        return self._staged(a, reduce)

    def broadcast(self, a, root):
        def bcast(host):
            out = host if self.rank == root else np.empty_like(host)
            self.comm.Bcast(out, root=root)
            return out
        return self._staged(a, bcast)

    def exchange(self, a, peer):
        def sendrecv(host):
            out = np.empty_like(host)
            self.comm.Sendrecv(host, dest=peer, recvbuf=out, source=peer)
            return out
        return a if peer == self.rank else self._staged(a, sendrecv)

    def barrier(self):
        self.comm.Barrier()


class _NCCL:
    """Collectives through NCCL (cupyx.distributed) on GPU arrays; host arrays (metrics, counts) are
    copied to the GPU and back, explicitly."""
    name = "nccl"

    def __init__(self, rank: int, size: int, use_mpi: bool):
        backend.use_cuda_device(_local_rank(rank) % backend.cuda_device_count())
        self.rank, self.size = rank, size
        self.comm = backend.nccl_process_group(size, rank, use_mpi=use_mpi)

    def _on_device(self, a, collective):
        out = collective(backend.to_device(a, "cuda"))
        return out if backend.get_array_module(a) is not np else backend.to_numpy(out)

    def all_reduce(self, a, op):
        def reduce(d):
            out = backend.get_array_module(d).empty_like(d)
            self.comm.all_reduce(backend.contiguous(d), out, "sum")
            return out
        return self._on_device(a, reduce)

    def broadcast(self, a, root):
        def bcast(d):
            out = backend.contiguous(d).copy()
            self.comm.broadcast(out, root)
            return out
        return self._on_device(a, bcast)

    def exchange(self, a, peer):
        def sendrecv(d):
            out = backend.get_array_module(d).empty_like(d)
            self.comm.send_recv(backend.contiguous(d), out, peer)
            return out
        return a if peer == self.rank else self._on_device(a, sendrecv)

    def barrier(self):
        self.comm.barrier()


_group = _Single()


def _abort_all_on_uncaught_exception(abort, rank_: int, size: int) -> None:
    """Make an uncaught exception on one rank stop every rank. Without this, the failed rank exits
    and the others wait for it in their next collective forever (a killed rank is different: the
    launcher sees it die and stops the others)."""
    previous = sys.excepthook

    def hook(kind, value, traceback):
        previous(kind, value, traceback)
        if size > 1:
            sys.stderr.write(f"minivolo.distributed: rank {rank_} of {size} failed ({kind.__name__}); "
                             "stopping all ranks\n")
            sys.stderr.flush()
            abort(1)
    sys.excepthook = hook


def _env_int(name: str | None) -> int | None:
    value = os.environ.get(name) if name else None
    return int(value) if value not in (None, "") else None


def _launched_by_mpi() -> bool:
    return any(os.environ.get(r) for r, _ in _MPI_ENV)


def _env_rank_size() -> tuple[int, int]:
    """(rank, world size) from the launcher: an MPI launcher's variables, else torchrun's RANK/WORLD_SIZE."""
    for r, s in _MPI_ENV + (("RANK", "WORLD_SIZE"),):
        if _env_int(r) is not None:
            size = _env_int(s)
            if size is None:  # PMIx gives no size variable: ask MPI
                from mpi4py import MPI
                size = MPI.COMM_WORLD.Get_size()
            return _env_int(r), size
    return 0, 1


def _local_rank(rank: int) -> int:
    """The rank among the processes of this machine (which GPU to use)."""
    for name in _LOCAL_RANK_ENV:
        if _env_int(name) is not None:
            return _env_int(name)
    return rank


def init(backend: str = "auto", device: str | None = None) -> None:
    """Join the process group of this run (call once, in every process, before building the model).

    backend: "mpi" (mpi4py; arrays on the GPU go through explicit host copies), "nccl" (NCCL through
    ``cupyx.distributed``, for CuPy arrays; one GPU per rank, chosen by the local rank), or "auto":
    a process not started by an MPI launcher (no PMI_RANK, OMPI_COMM_WORLD_RANK, ... variable) is a
    world of one and needs no mpi4py; under an MPI launcher, "nccl" when ``device`` (default: the
    default device) is "cuda" and NCCL is usable, "mpi" otherwise. Calling ``init`` again does nothing.
    """
    global _group
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if _group.size > 1 or _group.name != "none":
        return
    rank_, size = _env_rank_size()
    if backend == "auto":
        if not _launched_by_mpi() and size == 1:
            return
        backend = "nccl" if (device or _default_device()) == "cuda" and _nccl_usable() else "mpi"
    if backend == "nccl":
        if not _nccl_usable():
            raise RuntimeError("backend 'nccl' needs CuPy with NCCL and a CUDA GPU; use backend='mpi' "
                               "(host staging) or install cupy with NCCL")
        _group = _NCCL(rank_, size, use_mpi=_launched_by_mpi())
    else:
        try:
            _group = _MPI()
        except ImportError as e:
            raise RuntimeError("distributed backend 'mpi' needs mpi4py: pip install 'minivolo[dist]' "
                               f"(mpi4py and mpich) ({e})") from e


def _default_device() -> str:
    return backend.default_device()


def _nccl_usable() -> bool:
    return backend.cuda_available() and backend.nccl_available()


def rank() -> int:
    """This process's index in the group, 0 .. world_size() - 1 (0 without ``init``)."""
    return _group.rank


def world_size() -> int:
    """The number of processes in the group (1 without ``init``)."""
    return _group.size


def is_main() -> bool:
    """True on rank 0, the process that writes files and prints."""
    return _group.rank == 0


def backend_name() -> str:
    """"mpi", "nccl", or "none" (a single process)."""
    return _group.name


def all_reduce(array, op: str = "sum"):
    """The elementwise sum (op="sum") or mean (op="mean") of ``array`` over all ranks, returned on every
    rank as a new array of the same shape, dtype and module (NumPy or CuPy) as the input; with one
    process, ``array`` itself. Every rank must pass an array of the same shape and dtype."""
    if op not in _OPS:
        raise ValueError(f"all_reduce: op must be one of {_OPS}, got {op!r}")
    if not backend.is_array(array):
        raise TypeError(f"all_reduce: expected a NumPy or CuPy array, got {type(array).__name__}")
    if _group.size == 1:
        return array
    out = _group.all_reduce(array, op)
    if op == "mean" and out.dtype.kind in "fc":
        out /= out.dtype.type(_group.size)  # in place, in the array's dtype
    elif op == "mean":
        out = out / _group.size  # integers average to floats
    return out


def broadcast(array, root: int = 0):
    """Rank ``root``'s ``array`` on every rank (same shape and dtype everywhere), as a new array of the
    input's module; with one process, ``array`` itself."""
    if not 0 <= root < _group.size:
        raise ValueError(f"broadcast: root must be in [0, {_group.size}), got {root}")
    return array if _group.size == 1 else _group.broadcast(array, root)


def broadcast_object(obj, root: int = 0):
    """Rank ``root``'s ``obj`` (anything JSON can hold: a run name, a config) on every rank."""
    if _group.size == 1:
        return obj
    data = np.frombuffer(json.dumps(obj).encode(), np.uint8) if _group.rank == root else np.zeros(0, np.uint8)
    length = broadcast(np.array([data.size], np.int64), root)
    data = data if _group.rank == root else np.zeros(int(length[0]), np.uint8)
    return json.loads(broadcast(data, root).tobytes().decode())


def exchange(array, peer: int):
    """Send ``array`` to rank ``peer`` and return the array that ``peer`` sends back (same shape and
    dtype); ``array`` itself when ``peer`` is this rank."""
    if not 0 <= peer < _group.size:
        raise ValueError(f"exchange: peer must be in [0, {_group.size}), got {peer}")
    return _group.exchange(array, peer)


def abort(code: int = 1) -> None:
    """Stop every rank now (MPI_Abort): for a failure on one rank, which the others would wait for."""
    if _group.name == "mpi":
        _group.comm.Abort(code)
    raise SystemExit(code)


def barrier() -> None:
    """Wait until every rank has reached this call."""
    _group.barrier()


# --- the global batch: what one process would draw and pair ----------------------------------------
def global_batch_rows(draw, shape: tuple):
    """``draw(shape)`` as one process draws it for the global batch, cut to this rank's rows.

    shape (b, ...) is per sample along axis 0 (b = this rank's batch); the draw is made for
    (b * world_size, ...) and the rows rank::world_size are kept, the rows of this rank's samples (see
    ``DataLoader``). With generators seeded alike on all ranks, a data-parallel run thus drops the same
    paths as one process on the global batch. One process: ``draw(shape)``.
    """
    w = _group.size
    if w == 1:
        return draw(tuple(shape))
    return draw((shape[0] * w,) + tuple(shape[1:]))[_group.rank::w]


def flip_batch(x: Tensor) -> Tensor:
    """``x.flip(0)`` of the *global* batch, of which this rank holds rows ``rank::world_size``.

    Global row p = rank + world j pairs with row B - 1 - p = world (b - 1 - j) + (world - 1 - rank):
    row b - 1 - j of rank world - 1 - rank. So each rank receives its partner rank's shard and flips
    it locally (one exchange); the backward does the same with the gradient. One process: ``x[::-1]``.
    Mix-token uses it, so that a data-parallel step pastes the same tokens as one process does.
    """
    peer = _group.size - 1 - _group.rank

    def flip(a):
        return exchange(a, peer)[::-1]
    return Tensor.from_op(flip(x.data), (x,), lambda g: (flip(g),), "flip_batch")


# --- data parallelism ---------------------------------------------------------------------------------
def _make_buckets(params: list, cap_bytes: int) -> list[list]:
    """Parameters in reverse registration order (roughly the order backward finishes their gradients,
    as torch's DDP), grouped into buckets of at most ``cap_bytes`` and one dtype (one parameter larger
    than the cap is a bucket of its own)."""
    buckets, size = [], 0
    for p in reversed(params):
        nbytes = p.data.size * p.data.itemsize
        if not buckets or size + nbytes > cap_bytes or buckets[-1][0].dtype != p.dtype:
            buckets.append([])
            size = 0
        buckets[-1].append(p)
        size += nbytes
    return buckets


class DistributedDataParallel:
    """Wrap a model for data-parallel training (as ``torch.nn.parallel.DistributedDataParallel``).

    On construction, every rank takes rank 0's parameters and buffers. ``ddp(x)`` runs the model (in
    training mode rank 0's buffers are broadcast first when ``broadcast_buffers``, as torch). After
    ``loss.backward()``, ``ddp.reduce_gradients()`` averages the gradients over the ranks with one
    all-reduce per bucket of about ``bucket_cap_mb`` MB of flattened gradients. (torch starts these
    all-reduces from autograd hooks during backward, overlapping them with it; minivolo's graph has
    no hooks, so the training loop calls this one method after backward.)

    The loss of each rank is the mean over its shard of the global batch, so the average of the
    ranks' gradients is the gradient of the mean over the global batch. A parameter without a
    gradient on a rank counts as zeros there; every rank ends with the same gradients.
    The wrapped model is ``ddp.module`` (save ``ddp.module.state_dict()``).
    """

    def __init__(self, module, bucket_cap_mb: float = 25, broadcast_buffers: bool = True):
        if not bucket_cap_mb > 0:
            raise ValueError(f"bucket_cap_mb must be > 0, got {bucket_cap_mb}")
        self.module, self.bucket_cap_mb, self.broadcast_buffers = module, bucket_cap_mb, broadcast_buffers
        self._params = [p for p in module.parameters() if p.requires_grad]
        self.buckets = _make_buckets(self._params, int(bucket_cap_mb * 2 ** 20))
        self._broadcast(list(module.parameters()) + self._buffers())

    def _buffers(self) -> list:
        return [b for _, b in self.module.named_buffers()]

    @staticmethod
    def _broadcast(tensors: list) -> None:
        for t in tensors:
            t.data[...] = broadcast(t.data, 0)

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    def forward(self, *args, **kwargs):
        self._before_forward()
        return self.module(*args, **kwargs)

    def forward_train(self, *args, **kwargs):
        """``module.forward_train`` (VOLO's token-labeling forward), with forward's buffer broadcast."""
        self._before_forward()
        return self.module.forward_train(*args, **kwargs)

    def _before_forward(self) -> None:
        if self.broadcast_buffers and self.module.training and world_size() > 1:
            self._broadcast(self._buffers())

    def reduce_gradients(self) -> None:
        """Replace every parameter's gradient by its mean over the ranks, one all-reduce per bucket."""
        if world_size() == 1:
            return
        for bucket in self.buckets:
            xp = bucket[0].xp
            flat = xp.concatenate([(p.grad.data if p.grad is not None else xp.zeros_like(p.data)).ravel()
                                   for p in bucket])
            flat = all_reduce(flat, "mean")
            offset = 0
            for p in bucket:  # the gradients become views of the reduced buffer
                p.grad = Tensor(flat[offset:offset + p.data.size].reshape(p.shape))
                offset += p.data.size

    def train(self, mode: bool = True):
        self.module.train(mode)
        return self

    def eval(self):
        return self.train(False)

    def parameters(self):
        return self.module.parameters()

    def __repr__(self) -> str:
        return (f"DistributedDataParallel(world_size={world_size()}, buckets={len(self.buckets)}, "
                f"bucket_cap_mb={self.bucket_cap_mb})\n  (module): {self.module!r}")
