"""minivolo.distributed, SyncBatchNorm and the DataLoader's split, in one process (no mpi4py needed).

The multi-process checks (mpiexec -n 2) are in test_distributed_mpi.py.
"""
import os
import subprocess
import sys

import numpy as np
import pytest

import minivolo
from minivolo import backend
from minivolo import distributed as dist
from minivolo import nn
from minivolo.datasets import ArrayDataset, Compose, DataLoader, Normalize, RandomCrop, RandomHorizontalFlip
from minivolo.models import create_model
from minivolo.tensor import Tensor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _tensor(a, requires_grad: bool = False) -> Tensor:
    """A Tensor of host data on the default device (the GPU stand-in's in --fake-gpu mode)."""
    return Tensor(backend.to_device(a, backend.default_device()), requires_grad=requires_grad)


# --- collectives in a world of one ------------------------------------------------------------------
def test_single_process_is_a_world_of_one():
    assert (dist.rank(), dist.world_size(), dist.is_main(), dist.backend_name()) == (0, 1, True, "none")
    a = np.arange(4.0)
    assert dist.all_reduce(a) is a and dist.all_reduce(a, "mean") is a
    assert dist.broadcast(a) is a and dist.exchange(a, 0) is a
    dist.barrier()


def test_collective_arguments_are_checked():
    with pytest.raises(ValueError, match="op must be one of"):
        dist.all_reduce(np.ones(2), op="max")
    with pytest.raises(TypeError, match="expected a NumPy or CuPy array, got list"):
        dist.all_reduce([1.0, 2.0])
    with pytest.raises(ValueError, match=r"root must be in \[0, 1\), got 1"):
        dist.broadcast(np.ones(2), root=1)
    with pytest.raises(ValueError, match=r"peer must be in \[0, 1\), got -1"):
        dist.exchange(np.ones(2), -1)
    with pytest.raises(ValueError, match="backend must be one of"):
        dist.init("gloo")
    with pytest.raises(ValueError, match="bucket_cap_mb must be > 0"):
        dist.DistributedDataParallel(nn.Linear(2, 2), bucket_cap_mb=0)


def test_init_outside_a_launcher_needs_no_mpi4py():
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PMI", "OMPI_", "MV2_", "PMIX"))}
    env["PYTHONPATH"] = ROOT
    code = ("import sys; from minivolo import distributed as d; d.init(); "
            "print(d.world_size(), d.rank(), d.backend_name(), 'mpi4py' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["1", "0", "none", "False"]


def test_nccl_without_a_gpu_is_a_clear_error():
    if minivolo.cuda_available():
        pytest.skip("a GPU is present: NCCL may well work")  # (never the case on the CPU machines)
    with pytest.raises(RuntimeError, match="backend 'nccl' needs CuPy with NCCL and a CUDA GPU"):
        dist.init("nccl")


def test_global_batch_helpers_in_one_process():
    x = Tensor(np.arange(6.0).reshape(3, 2), requires_grad=True)
    y = dist.flip_batch(x)
    np.testing.assert_array_equal(y.numpy(), x.numpy()[::-1])
    w = np.arange(6.0).reshape(3, 2) + 1
    (y * Tensor(w)).sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), w[::-1])
    rows = dist.global_batch_rows(lambda shape: np.arange(np.prod(shape)).reshape(shape), (3, 2))
    np.testing.assert_array_equal(rows, np.arange(6).reshape(3, 2))


# --- DistributedDataParallel -------------------------------------------------------------------------
def test_buckets_hold_every_parameter_once_in_reverse_order_within_the_cap():
    model = create_model("volo_nano")
    params = list(model.parameters())
    cap = 40_000
    buckets = dist._make_buckets(params, cap)
    assert [id(p) for b in buckets for p in b] == [id(p) for p in reversed(params)]
    for b in buckets:
        nbytes = sum(p.data.nbytes for p in b)
        assert nbytes <= cap or len(b) == 1
        assert len({p.dtype for p in b}) == 1
    assert len(buckets) > 3
    assert len(dist._make_buckets(params, 2 ** 40)) == 1  # everything fits one bucket


def test_buckets_split_where_the_dtype_changes():
    params = [nn.Parameter(np.zeros(3, np.float32)), nn.Parameter(np.zeros(3, np.float64)),
              nn.Parameter(np.zeros(3, np.float64))]
    assert [len(b) for b in dist._make_buckets(params, 2 ** 20)] == [2, 1]


def test_ddp_in_one_process_runs_the_model_and_keeps_its_gradients():
    model = create_model("volo_nano").double()
    ddp = dist.DistributedDataParallel(model, bucket_cap_mb=0.01)
    x = _tensor(np.random.default_rng(0).standard_normal((2, 3, 32, 32)))
    ddp(x).sum().backward()
    before = {n: p.grad.data for n, p in model.named_parameters()}
    ddp.reduce_gradients()
    for n, p in model.named_parameters():
        assert p.grad.data is before[n]
    assert "DistributedDataParallel(world_size=1" in repr(ddp)


# --- SyncBatchNorm -----------------------------------------------------------------------------------
def test_sync_batchnorm_in_one_process_is_batchnorm():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((4, 3, 5, 5))
    out = {}
    for cls in (nn.BatchNorm2d, nn.SyncBatchNorm):
        bn = cls(3).double()
        bn.weight.data[...] = bn.weight.xp.asarray([1.0, 2.0, 3.0])
        xt = _tensor(x, requires_grad=True)
        (bn(xt) * _tensor(np.arange(x.size).reshape(x.shape))).sum().backward()
        out[cls] = [xt.grad, bn.weight.grad, bn.bias.grad, bn.running_mean, bn.running_var]
    for a, b in zip(out[nn.BatchNorm2d], out[nn.SyncBatchNorm]):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_convert_sync_batchnorm_shares_the_state_and_keeps_the_order():
    model = create_model("volo_nano").double().eval()
    x = _tensor(np.random.default_rng(2).standard_normal((2, 3, 32, 32)))
    before = model(x).numpy()
    bns = {n: m for n, m in model.named_modules() if type(m) is nn.BatchNorm2d}
    assert len(bns) == 3  # the stem's three
    converted = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    assert converted is model
    modules = dict(model.named_modules())
    for name, bn in bns.items():
        sync = modules[name]
        assert type(sync) is nn.SyncBatchNorm and not sync.training
        assert sync.weight is bn.weight and sync.bias is bn.bias and sync.running_mean is bn.running_mean
        assert (sync.eps, sync.momentum, sync.num_features) == (bn.eps, bn.momentum, bn.num_features)
    np.testing.assert_array_equal(model(x).numpy(), before)  # same layers, same order
    assert list(model.state_dict()) == list(create_model("volo_nano").state_dict())
    single = nn.SyncBatchNorm.convert_sync_batchnorm(nn.BatchNorm2d(4, bias=False))
    assert type(single) is nn.SyncBatchNorm and single.bias is None
    with pytest.raises(ValueError, match="process_group must be None"):
        nn.SyncBatchNorm.convert_sync_batchnorm(model, process_group="world")


# --- the DataLoader's split --------------------------------------------------------------------------
def _dataset(n: int) -> ArrayDataset:
    rng = np.random.default_rng(n)
    return ArrayDataset(rng.integers(0, 256, (n, 1, 6, 6), dtype=np.uint8), np.arange(n) % 3, ["a", "b", "c"])


def _shard(n, w, r, **kw):
    loader = DataLoader(_dataset(n), batch_size=2, num_replicas=w, rank=r, **kw)
    return loader._order(np.random.default_rng([loader.seed, 0])), len(loader)


@pytest.mark.parametrize("n, w", [(10, 2), (11, 2), (11, 3), (4, 3), (2, 5)])
@pytest.mark.parametrize("shuffle", [False, True])
def test_shards_cover_the_permutation(n, w, shuffle):
    perm = np.random.default_rng([0, 0]).permutation(n) if shuffle else np.arange(n)
    padded = [_shard(n, w, r, shuffle=shuffle)[0] for r in range(w)]
    assert len({len(s) for s in padded}) == 1 and len(padded[0]) == -(-n // w)
    interleaved = np.stack(padded, axis=1).ravel()  # shard r holds positions r::w
    np.testing.assert_array_equal(interleaved[:n], perm)
    np.testing.assert_array_equal(interleaved[n:], np.resize(perm, len(interleaved) - n))  # padding
    dropped = [_shard(n, w, r, shuffle=shuffle, drop_last=True)[0] for r in range(w)]
    np.testing.assert_array_equal(np.stack(dropped, axis=1).ravel(), perm[:n // w * w])
    exact = [_shard(n, w, r, shuffle=shuffle, pad=False)[0] for r in range(w)]
    assert sorted(np.concatenate(exact)) == list(range(n))  # every sample exactly once
    assert [len(s) for s in exact] == [len(range(r, n, w)) for r in range(w)]


@pytest.mark.parametrize("drop_last", [False, True])
def test_shards_match_torchs_distributed_sampler(drop_last):
    torch_data = pytest.importorskip("torch.utils.data")
    for n, w in [(10, 3), (7, 2), (2, 4)]:
        for r in range(w):
            sampler = torch_data.DistributedSampler(range(n), num_replicas=w, rank=r, shuffle=False,
                                                    drop_last=drop_last)
            assert list(_shard(n, w, r, drop_last=drop_last)[0]) == list(sampler)


def test_ranks_together_see_the_batches_and_augmentation_of_one_process():
    ds = _dataset(24)
    transform = Compose([RandomCrop(6, padding=2), RandomHorizontalFlip(), Normalize([0.5], [0.25])])
    kw = dict(shuffle=True, drop_last=True, seed=7, transform=transform)
    w, b = 3, 2
    one = list(DataLoader(ds, b * w, **kw))
    ranks = [list(DataLoader(ds, b, num_replicas=w, rank=r, **kw)) for r in range(w)]
    assert len(one) == 4 and all(len(batches) == 4 for batches in ranks)
    for k, (x, y) in enumerate(one):
        for r in range(w):
            np.testing.assert_array_equal(ranks[r][k][0], x[r::w])
            np.testing.assert_array_equal(ranks[r][k][1], y[r::w])
    assert not np.array_equal(one[0][0][0], one[0][0][1])  # the augmentation really draws per sample


def test_loader_lengths_and_rank_errors():
    ds = _dataset(11)
    assert [len(DataLoader(ds, 2, num_replicas=2, rank=r)) for r in (0, 1)] == [3, 3]
    assert [len(DataLoader(ds, 2, num_replicas=2, rank=r, drop_last=True)) for r in (0, 1)] == [2, 2]
    assert [len(DataLoader(ds, 2, num_replicas=2, rank=r, pad=False)) for r in (0, 1)] == [3, 3]
    assert [DataLoader(ds, 2, num_replicas=2, rank=r, pad=False).num_samples() for r in (0, 1)] == [6, 5]
    with pytest.raises(ValueError, match=r"rank must be an integer in \[0, 2\) \(num_replicas\), got 2"):
        DataLoader(ds, 2, num_replicas=2, rank=2)
    with pytest.raises(ValueError, match="num_replicas must be an integer >= 1, got 0"):
        DataLoader(ds, 2, num_replicas=0)


def test_batch_norm_with_all_reduce_equals_batch_norm_of_the_whole_batch():
    """Two 'processes' as two threads whose all_reduce sums through a barrier: each normalises half
    of the batch, and together they give F.batch_norm of the whole batch, forward and backward."""
    import threading

    from minivolo import functional as F
    rng = np.random.default_rng(3)
    x, g = rng.standard_normal((6, 3, 4, 4)), rng.standard_normal((6, 3, 4, 4))
    weight, bias = rng.standard_normal(3), rng.standard_normal(3)

    def run(x, g, all_reduce=None):
        xt = Tensor(x, requires_grad=True)
        w, b = Tensor(weight, requires_grad=True), Tensor(bias, requires_grad=True)
        rm, rv = np.zeros(3), np.ones(3)
        out = F.batch_norm(xt, rm, rv, w, b, training=True, all_reduce=all_reduce)
        out.backward(g)
        return [out.numpy(), xt.grad.numpy(), w.grad.numpy(), b.grad.numpy(), rm, rv]

    barrier, slots = threading.Barrier(2), [None, None]

    def all_reduce_of(rank):
        def all_reduce(a):
            slots[rank] = a
            barrier.wait()
            total = slots[0] + slots[1]
            barrier.wait()
            return total
        return all_reduce

    results = [None, None]
    threads = [threading.Thread(target=lambda r=r: results.__setitem__(
        r, run(x[r::2], g[r::2], all_reduce_of(r)))) for r in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    whole = run(x, g)
    for r in (0, 1):
        np.testing.assert_allclose(results[r][0], whole[0][r::2], atol=1e-12)   # output
        np.testing.assert_allclose(results[r][1], whole[1][r::2], atol=1e-12)   # input gradient
        for a, b in zip(results[r][4:], whole[4:]):                             # running statistics
            np.testing.assert_allclose(a, b, atol=1e-12)
    for i in (2, 3):  # each half's weight/bias gradients sum to the whole batch's
        np.testing.assert_allclose(results[0][i] + results[1][i], whole[i], atol=1e-12)


# --- the training loop in one process with the data-parallel options ----------------------------------
def test_one_process_train_with_sync_bn_in_float64_saves_its_world_size(tmp_path):
    from minivolo.train import TrainConfig, load_checkpoint, predict, train
    result = train(model="volo_nano", epochs=1, max_train=64, max_test=32, batch_size=32, sync_bn=True,
                   dtype="float64", out=str(tmp_path), name="run", progress=False)
    assert isinstance(result["model"].patch_embed.conv[1], nn.SyncBatchNorm)
    assert next(iter(result["model"].parameters())).dtype == np.float64
    ckpt = load_checkpoint(tmp_path / "run")
    assert ckpt["world_size"] == 1 and ckpt["config"]["sync_bn"]
    assert ckpt["model"]["head.weight"].dtype == np.float64
    image = np.zeros((28, 28), np.uint8)
    assert len(predict(tmp_path / "run", [image], topk=2)[0]) == 2
    with pytest.raises(ValueError, match="dtype must be one of"):
        TrainConfig(dtype="float16").validate()
