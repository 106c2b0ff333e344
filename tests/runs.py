"""Helpers for the tests that train: a run cut in its second epoch, and the per-iteration count of
device waits and copies on the CuPy stand-in."""
import numpy as np
import pytest


def cut_in_second_epoch(T, monkeypatch, **config) -> None:
    """Start ``T.train(**config)`` and stop it with a KeyboardInterrupt as its second epoch begins (the
    first epoch's checkpoint is written); ``T`` is minivolo.train."""
    real = T.train_one_epoch

    def crash_in_second_epoch(*args, **kwargs):
        if args[-1] == 1:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(T, "train_one_epoch", crash_in_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        T.train(**config)
    monkeypatch.setattr(T, "train_one_epoch", real)


def assert_same_weights(a: dict, b: dict, optimizer: bool = True) -> None:
    """Two checkpoints (``load_checkpoint``) hold equal weights (and optimizer moments), bit for bit."""
    for k, v in a["model"].items():
        assert np.array_equal(v, b["model"][k]), k
    if optimizer:
        for i, state in a["optimizer"]["state"].items():
            for k, v in state.items():
                assert np.array_equal(v, b["optimizer"]["state"][i][k]), (i, k)


def per_iteration(on_fakecupy, run) -> tuple:
    """(syncs, copies, report) per training iteration: ``run(name, iterations)`` after a warm-up run, the
    counts of a 4-iteration run minus those of a 1-iteration run, over 3."""
    run("warm-up", 1)  # constants cached on the device (pooling divisors, ...) are built here
    counts = {}
    for iterations in (1, 4):
        with on_fakecupy.counting() as c:
            run(f"it{iterations}", iterations)
        counts[iterations] = c
    syncs = (counts[4].syncs - counts[1].syncs) / 3
    copies = (counts[4].copies - counts[1].copies) / 3
    report = "\n".join(f"{n} iterations: {counts[n].report()}" for n in counts)
    return syncs, copies, report
