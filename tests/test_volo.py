"""VOLO against timm (the reference): same state_dict, same outputs, same gradients.

Weights go timm -> state_dict -> NumPy -> our ``load_state_dict``; then both run the same input and
backpropagate the same random weighting of their outputs, and every gradient is compared by name.
"""
import numpy as np
import pytest

import minivolo as mv
from minivolo.models import (VOLO, OutlookAttention, create_model, list_models, load_pretrained, resize_pos_embed,
                             save_npz, volo_d1_224)
from test_volo_math import TINY, write_safetensors
from timm_shim import import_timm

torch = pytest.importorskip("torch")
# One thread for the reference: after each parallel op torch's OpenMP workers spin, starving NumPy's BLAS
# on the same cores (measured on 2 busy cores: 3 s instead of 0.1 s per small-network comparison).
torch.set_num_threads(1)

RTOL = {np.float64: 1e-10, np.float32: 1e-5}   # a single block
RTOL_NET = {np.float64: 1e-9, np.float32: 1e-4}  # a whole network

# small configurations that still exercise every code path (TINY: test_volo_math.py)
PATCH8 = dict(layers=(2, 1, 1, 1), embed_dims=(16, 24, 24, 24), num_heads=(2, 3, 3, 3), patch_size=8,
              stem_hidden_dim=8, img_size=64, num_classes=7, qkv_bias=True, mlp_ratio=4., pooling_scale=2)


@pytest.fixture(scope="module")
def timm():
    return import_timm()


def torch_state(module) -> dict:
    return {k: v.detach().cpu().numpy() for k, v in module.state_dict().items()}


def assert_close(ours, ref, rtol: float, what: str):
    """Relative to the tensor's scale, so that entries near zero do not need an absolute tolerance."""
    ours, ref = np.asarray(ours), np.asarray(ref)
    assert ours.shape == ref.shape, f"{what}: shape {ours.shape} != timm {ref.shape}"
    np.testing.assert_allclose(ours, ref, rtol=rtol, atol=rtol * max(np.abs(ref).max(), 1e-30), err_msg=what)


def twin(theirs, ours, dtype):
    """Put ``theirs`` (torch) and ``ours`` in ``dtype`` with the same weights."""
    theirs.to(torch.float64 if dtype == np.float64 else torch.float32)
    ours.to(dtype=dtype)
    ours.load_state_dict(torch_state(theirs))
    return theirs, ours


def backward_both(ours_out, theirs_out, seed=0):
    """Backpropagate sum(out_i * w_i) with the same random w_i on both sides."""
    rng = np.random.default_rng(seed)
    loss_ours, loss_theirs = 0, 0
    for m, t in zip(ours_out, theirs_out):
        w = rng.standard_normal(m.shape).astype(m.dtype)
        loss_ours = loss_ours + (m * mv.Tensor(w)).sum()
        loss_theirs = loss_theirs + (t * torch.from_numpy(w)).sum()
    loss_ours.backward()
    loss_theirs.backward()


def assert_grads_match(ours, theirs, rtol):
    theirs_params = dict(theirs.named_parameters())
    names = [n for n, _ in ours.named_parameters()]
    assert names == list(theirs_params), "parameter names differ"
    for name, p in ours.named_parameters():
        ref = theirs_params[name].grad
        assert ref is not None, name
        assert p.grad is not None, f"{name}: no gradient"
        assert_close(p.grad.numpy(), ref.numpy(), rtol, f"gradient of {name}")


def inputs(shape, dtype, seed=1):
    x = np.random.default_rng(seed).standard_normal(shape).astype(dtype)
    return mv.Tensor(x, requires_grad=True), torch.from_numpy(x.copy()).requires_grad_(True)


# --- (a) outlook attention ----------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("dim,heads,k,p,s,H,W,bias", [
    (8, 1, 3, 1, 1, 5, 6, False),
    (12, 3, 3, 1, 2, 7, 6, True),
    (16, 4, 5, 2, 2, 8, 9, False),
    (12, 2, 5, 2, 1, 6, 5, True),
    (16, 2, 3, 1, 2, 4, 4, False),
])
def test_outlook_attention_matches_timm(timm, dtype, dim, heads, k, p, s, H, W, bias):
    from timm.models.volo import OutlookAttention as TimmOutlookAttention
    theirs, ours = twin(TimmOutlookAttention(dim, heads, kernel_size=k, padding=p, stride=s, qkv_bias=bias),
                        OutlookAttention(dim, heads, kernel_size=k, padding=p, stride=s, qkv_bias=bias), dtype)
    x, xt = inputs((2, H, W, dim), dtype)
    out, out_t = ours(x), theirs(xt)
    assert_close(out.numpy(), out_t.detach().numpy(), RTOL[dtype], "output")
    backward_both([out], [out_t])
    assert_close(x.grad.numpy(), xt.grad.numpy(), RTOL[dtype], "input gradient")
    assert_grads_match(ours, theirs, RTOL[dtype])


# --- (b) whole small networks -------------------------------------------------------------------------
@pytest.mark.parametrize("cfg", [TINY, PATCH8], ids=["tiny", "patch8"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_volo_eval_logits_match_timm(timm, cfg, dtype):
    theirs, ours = twin(timm.models.volo.VOLO(**cfg).eval(), VOLO(**cfg).eval(), dtype)
    x, xt = inputs((3, 3, cfg["img_size"], cfg["img_size"]), dtype)
    with torch.no_grad():
        ref = theirs(xt).numpy()
    with mv.no_grad():
        assert_close(ours(x).numpy(), ref, RTOL_NET[dtype], "eval logits")
        assert_close(ours.forward_train(x).numpy(), ref, RTOL_NET[dtype], "eval forward_train")


@pytest.mark.parametrize("fused", [True, False])
def test_outlook_attention_on_an_empty_batch_like_timm(timm, fused):
    """A (0, H, W, C) batch: empty output and input gradient, zero parameter gradients, as timm. (timm's whole
    VOLO cannot take an empty batch: its reshape(B, -1, C) is ambiguous; ours gives (0, num_classes).)"""
    from timm.models.volo import OutlookAttention as TimmOutlookAttention
    theirs, ours = twin(TimmOutlookAttention(8, 2, stride=2), OutlookAttention(8, 2, stride=2, fused=fused),
                        np.float64)
    x, xt = inputs((0, 5, 5, 8), np.float64)
    out, out_t = ours(x), theirs(xt)
    assert out.shape == tuple(out_t.shape) == (0, 5, 5, 8)
    backward_both([out], [out_t])
    assert x.grad.shape == tuple(xt.grad.shape)
    assert_grads_match(ours, theirs, 1e-12)


@pytest.mark.parametrize("cfg,mix", [(TINY, False), (TINY, True), (PATCH8, True)],
                         ids=["tiny", "tiny-mix", "patch8-mix"])
def test_volo_train_step_matches_timm(timm, monkeypatch, cfg, mix):
    """Train mode (BatchNorm on batch statistics, drop rates 0): outputs, aux outputs, every gradient and
    the BatchNorm running statistics agree; with mix-token both use the same fixed box."""
    dtype = np.float64
    cfg = dict(cfg, use_mix_token=mix)
    theirs, ours = twin(timm.models.volo.VOLO(**cfg).train(), VOLO(**cfg).train(), dtype)
    box = (1, 0, 3, 2) if mix else None
    if mix:
        monkeypatch.setattr(timm.models.volo, "rand_bbox", lambda size, lam, scale=1: box)
    x, xt = inputs((3, 3, cfg["img_size"], cfg["img_size"]), dtype)
    cls, aux, bbox = ours.forward_train(x, bbox=box)
    feats_t, aux_t, bbox_t = theirs.forward_train(xt)
    cls_t = theirs.head(feats_t)  # timm 1.0.31's forward_train returns the class token before the head
    assert bbox == tuple(bbox_t) == (box or (0, 0, 0, 0))
    assert_close(cls.numpy(), cls_t.detach().numpy(), RTOL_NET[dtype], "class logits")
    assert_close(aux.numpy(), aux_t.detach().numpy(), RTOL_NET[dtype], "aux logits")
    backward_both([cls, aux], [cls_t, aux_t])
    assert_close(x.grad.numpy(), xt.grad.numpy(), RTOL_NET[dtype], "input gradient")
    assert_grads_match(ours, theirs, RTOL_NET[dtype])
    ref_state = torch_state(theirs)
    for name, value in ours.state_dict().items():
        assert_close(value, ref_state[name], RTOL_NET[dtype], name)


# --- (c) VOLO-D1 at 224 -------------------------------------------------------------------------------
def test_volo_d1_224_matches_timm(timm):
    theirs = timm.create_model("volo_d1_224", pretrained=False).eval()
    ours = volo_d1_224().eval()
    ref_state = torch_state(theirs)
    state = ours.state_dict()
    assert [(k, v.shape) for k, v in state.items()] == [(k, v.shape) for k, v in ref_state.items()]
    assert len(state) == 260
    assert ours.num_parameters() == sum(p.numel() for p in theirs.parameters()) == 26_632_040
    ours.load_state_dict(ref_state)
    x, xt = inputs((1, 3, 224, 224), np.float32)
    with torch.no_grad():
        ref = theirs(xt).numpy()
    with mv.no_grad():
        assert_close(ours(x).numpy(), ref, 1e-4, "VOLO-D1 logits")


# --- (d) parameter counts of D1..D5 -------------------------------------------------------------------
@pytest.mark.parametrize("name", ["volo_d1_224", "volo_d2_224", "volo_d3_224", "volo_d4_224", "volo_d5_224"])
def test_parameter_shapes_match_timm(timm, monkeypatch, name):
    """Shapes only: timm builds on the meta device, ours without drawing random weights."""
    for fn in ("trunc_normal_", "kaiming_uniform_", "uniform_", "normal_"):
        monkeypatch.setattr(mv.nn.init, fn, lambda t, *a, **k: t)
    with torch.device("meta"):
        theirs = timm.create_model(name)
    ours = create_model(name)
    shapes = {k: tuple(v.shape) for k, v in [*ours.named_parameters(), *ours.named_buffers()]}
    assert shapes == {k: tuple(v.shape) for k, v in theirs.state_dict().items()}
    assert ours.num_parameters() == sum(p.numel() for p in theirs.parameters())


# --- (e) bad inputs -----------------------------------------------------------------------------------
def test_state_dict_from_another_config_is_rejected(timm):
    state = torch_state(timm.models.volo.VOLO(**PATCH8))
    with pytest.raises(ValueError) as err:
        VOLO(**TINY).load_state_dict(state)
    msg = str(err.value)
    assert "network.1.proj.weight: expected shape (32, 16, 2, 2), got (24, 16, 2, 2)" in msg
    assert "unexpected key 'network.0.1.norm1.weight'" in msg
    assert "network.0.0.attn.v.bias" in msg  # PATCH8 has qkv_bias


# --- (f) checkpoints ----------------------------------------------------------------------------------
def test_load_pretrained_round_trips(timm, tmp_path):
    theirs = timm.models.volo.VOLO(**TINY).eval()
    ref_state = torch_state(theirs)
    sd = theirs.state_dict()
    torch.save(sd, tmp_path / "plain.pth")
    torch.save({"state_dict": {"module." + k: v for k, v in sd.items()}, "epoch": 3}, tmp_path / "wrapped.pth.tar")
    write_safetensors(tmp_path / "w.safetensors", ref_state)
    for name in ("plain.pth", "wrapped.pth.tar", "w.safetensors"):
        ours = VOLO(**TINY)
        load_pretrained(ours, str(tmp_path / name))
        for k, v in ours.state_dict().items():
            np.testing.assert_array_equal(v, ref_state[k], err_msg=f"{name}: {k}")
    save_npz(ours, tmp_path / "ours.npz")
    again = VOLO(**TINY).eval()
    load_pretrained(again, str(tmp_path / "ours.npz"))
    x, xt = inputs((2, 3, 32, 32), np.float32)
    with torch.no_grad():
        ref = theirs(xt).numpy()
    with mv.no_grad():
        assert_close(again(x).numpy(), ref, 1e-4, "logits after .pth -> .npz -> model")


def test_load_pretrained_resizes_pos_embed(timm, tmp_path):
    from timm.layers import resample_abs_pos_embed
    small = timm.models.volo.VOLO(**TINY)  # pos_embed grid 4x4
    torch.save(small.state_dict(), tmp_path / "small.pth")
    ours = VOLO(**dict(TINY, img_size=64))  # grid 8x8
    load_pretrained(ours, str(tmp_path / "small.pth"))
    pos = small.pos_embed.detach()
    # timm's helper defaults to antialias=True, which for bicubic means another kernel (PIL's, a = -0.5)
    # even when upsampling; plain bicubic (a = -0.75, as F.interpolate) is antialias=False
    ref = resample_abs_pos_embed(pos.reshape(1, 16, -1), new_size=(8, 8), old_size=(4, 4), num_prefix_tokens=0,
                                 interpolation="bicubic", antialias=False).reshape(1, 8, 8, -1)
    assert_close(ours.pos_embed.numpy(), ref.numpy(), 1e-6, "resized pos_embed")
    # non-square, through the public helper, against torch's own interpolate
    out = resize_pos_embed(pos.numpy(), (6, 3))
    ref = torch.nn.functional.interpolate(pos.permute(0, 3, 1, 2), size=(6, 3), mode="bicubic",
                                          align_corners=False).permute(0, 2, 3, 1)
    assert_close(out, ref.numpy(), 1e-6, "resize_pos_embed (6, 3)")


@pytest.mark.parametrize("suffix", [".pth", ".safetensors", ".npz"])
def test_truncated_checkpoint_raises(timm, tmp_path, suffix):
    theirs = timm.models.volo.VOLO(**TINY)
    path = tmp_path / f"full{suffix}"
    if suffix == ".pth":
        torch.save(theirs.state_dict(), path)
    elif suffix == ".safetensors":
        write_safetensors(path, torch_state(theirs))
    else:
        np.savez(path, **torch_state(theirs))
    blob = path.read_bytes()
    cut = tmp_path / f"cut{suffix}"
    cut.write_bytes(blob[:len(blob) // 2])
    with pytest.raises(ValueError, match=f"cut{suffix}"):
        load_pretrained(VOLO(**TINY), str(cut))


def test_load_pretrained_reports_wrong_config(timm, tmp_path):
    torch.save(timm.models.volo.VOLO(**PATCH8).state_dict(), tmp_path / "other.pth")
    with pytest.raises(ValueError, match=r"network.1.proj.weight: expected shape \(32, 16, 2, 2\)"):
        load_pretrained(VOLO(**TINY), str(tmp_path / "other.pth"))
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        load_pretrained(VOLO(**TINY), str(tmp_path / "missing.pth"))


# --- (g) configurations beyond the presets ----------------------------------------------------------
@pytest.mark.parametrize("extra", [
    dict(layers=(1, 1, 1, 1), downsamples=(True, False, True, False), img_size=64),
    dict(layers=(1, 1, 2), embed_dims=(16, 32, 32), num_heads=(2, 4, 4), downsamples=(True, False, False),
         outlook_attention=(True, False, False), post_layers=("ca",), global_pool="avg"),
    dict(post_layers=None),
    dict(num_classes=0, global_pool=""),
    dict(in_chans=1, patch_size=16, img_size=64),
    dict(img_size=(32, 48), mlp_ratio=(2., 3., 4., 1.5)),
    dict(img_size=36, qkv_bias=True, use_aux_head=False),
], ids=["downsample-twice", "three-stages-one-ca-avg", "no-post", "headless-no-pool", "grey-patch16",
        "non-square", "odd-size-bias-no-aux"])
def test_volo_configs_match_timm(timm, extra):
    """Eval logits, features, pre-logits and train-mode gradients of configurations beyond the presets."""
    dtype = np.float64
    cfg = {**TINY, **extra}
    theirs, ours = twin(timm.models.volo.VOLO(**cfg).eval(), VOLO(**cfg).eval(), dtype)
    hw = cfg["img_size"] if isinstance(cfg["img_size"], tuple) else (cfg["img_size"],) * 2
    x, xt = inputs((2, cfg.get("in_chans", 3)) + hw, dtype)
    with torch.no_grad():
        feats_t = theirs.forward_features(xt)
        ref = {"logits": theirs(xt), "features": feats_t, "pre-logits": theirs.forward_head(feats_t, True)}
    with mv.no_grad():
        feats = ours.forward_features(x)
        got = {"logits": ours(x), "features": feats, "pre-logits": ours.forward_head(feats, pre_logits=True)}
    for what in ref:
        assert_close(got[what].numpy(), ref[what].numpy(), RTOL_NET[dtype], what)
    theirs.train(), ours.train()
    out, out_t = ours(x), theirs(xt)
    assert_close(out.numpy(), out_t.detach().numpy(), RTOL_NET[dtype], "train-mode output")
    backward_both([out], [out_t])
    assert_close(x.grad.numpy(), xt.grad.numpy(), RTOL_NET[dtype], "input gradient")
    theirs_params = dict(theirs.named_parameters())
    assert [n for n, _ in ours.named_parameters()] == list(theirs_params)
    for name, p in ours.named_parameters():  # without post_layers timm's forward leaves out one token
        ref_grad = theirs_params[name].grad
        assert (p.grad is None) == (ref_grad is None), name
        if ref_grad is not None:
            assert_close(p.grad.numpy(), ref_grad.numpy(), RTOL_NET[dtype], f"gradient of {name}")


def test_drop_rates_are_identity_in_eval_and_drop_path_rule_matches_timm(timm):
    cfg = dict(TINY, layers=(2, 3, 4, 1), drop_rate=.3, pos_drop_rate=.2, attn_drop_rate=.2, drop_path_rate=.3)
    theirs, ours = twin(timm.models.volo.VOLO(**cfg).eval(), VOLO(**cfg).eval(), np.float64)
    rates = {n: m.drop_prob for n, m in ours.named_modules() if type(m).__name__ == "DropPath"}
    assert rates == {n: m.drop_prob for n, m in theirs.named_modules() if type(m).__name__ == "DropPath"}
    assert rates["network.2.0.drop_path1"] == pytest.approx(.3 * 2 / 9) and len(rates) == 2 * 8  # no outlooker
    x, xt = inputs((2, 3, 32, 32), np.float64)
    with torch.no_grad():
        ref = theirs(xt).numpy()
    with mv.no_grad():
        assert_close(ours(x).numpy(), ref, RTOL_NET[np.float64], "eval logits with drop rates")


def test_rand_bbox_matches_timm(timm, monkeypatch):
    """Same lam and centre -> same box, for many lam (timm computes the side in float32: at lam = 1e-8
    float64 gives n - 1), grids and centres, the clipping at the edges and non-square grids included."""
    from minivolo.models import rand_bbox

    class Centre:  # stands in for the generator: hands out the given centre
        def __init__(self, c):
            self.c = list(c)

        def integers(self, low, high):
            assert 0 <= self.c[0] < high
            return self.c.pop(0)

    rng = np.random.default_rng(0)
    lams = np.concatenate([rng.random(300), [0., 1e-8, 1e-7, .19, .36, .5, .75, 1. - 1e-7, 1.]]).astype(np.float32)
    for i, lam in enumerate(lams):
        H, W, scale = [(8, 8, 2), (14, 10, 2), (7, 9, 1), (16, 12, 4)][i % 4]
        centre = (int(rng.integers(0, H // scale)), int(rng.integers(0, W // scale)))
        draws = [torch.tensor([c]) for c in centre]
        monkeypatch.setattr(torch, "randint", lambda *a, **k: draws.pop(0))
        ref = timm.models.volo.rand_bbox((2, H, W, 4), torch.tensor(lam), scale=scale)
        monkeypatch.undo()
        assert rand_bbox((H // scale, W // scale), float(lam), Centre(centre)) == tuple(ref), (lam, H, W, centre)


def test_mix_token_on_a_non_square_grid_matches_timm(timm, monkeypatch):
    """The box's first pair indexes H (timm's "x" quirk): on a 2x3 grid an asymmetric box tells."""
    cfg = dict(TINY, img_size=(32, 48), use_mix_token=True)
    theirs, ours = twin(timm.models.volo.VOLO(**cfg).train(), VOLO(**cfg).train(), np.float64)
    box = (0, 1, 1, 3)  # rows 0:1, columns 1:3 of the 2x3 pooled grid
    monkeypatch.setattr(timm.models.volo, "rand_bbox", lambda size, lam, scale=1: box)
    x, xt = inputs((3, 3, 32, 48), np.float64)
    cls, aux, bbox = ours.forward_train(x, bbox=box)
    feats_t, aux_t, _ = theirs.forward_train(xt)
    assert_close(cls.numpy(), theirs.head(feats_t).detach().numpy(), RTOL_NET[np.float64], "class logits")
    assert_close(aux.numpy(), aux_t.detach().numpy(), RTOL_NET[np.float64], "aux logits")


@pytest.mark.parametrize("extra,message", [
    (dict(embed_dims=(16, 32, 32, 48), downsamples=(True, False, True, False), img_size=64),
     r"pos_embed is \(1, 8, 8, 48\) .* tokens entering network\[2\] are 8x8x32"),
    (dict(pooling_scale=4, img_size=64), r"pos_embed is \(1, 4, 4, 32\) .* are 8x8x32"),
    (dict(pooling_scale=1), r"pos_embed is \(1, 8, 8, 32\) .* are 4x4x32"),
    (dict(img_size=23), r"pos_embed is \(1, 2, 2, 32\) .* are 3x3x32"),  # the stem rounds 23/2 up
    (dict(img_size=7), r"img_size 7x7 is too small .* pos_embed grid is 0x0"),
    (dict(outlook_attention=(True, True, False, False), downsamples=(False, True, False, False)),
     r"stage 1 has embed_dim 32 but receives 16 channels"),
    (dict(downsamples=(True, False, False, True)), r"downsamples\[3\] must be False"),
    (dict(embed_dims=(16, 32, 32)), r"embed_dims of length 3"),
    (dict(embed_dims=(16, 30, 30, 30)), r"dim=30, num_heads=4"),
])
def test_configs_timm_cannot_run_are_rejected_clearly(timm, extra, message):
    """These fail in timm too, deep inside forward (or its constructor); ours says why when built."""
    cfg = {**TINY, **extra}
    with pytest.raises(ValueError, match=message):
        VOLO(**cfg)
    with pytest.raises((RuntimeError, IndexError)):
        timm.models.volo.VOLO(**cfg)(torch.zeros((1, 3) + (cfg["img_size"],) * 2))


def test_factories_pass_kwargs_and_match_every_timm_count(timm, monkeypatch):
    for fn in ("trunc_normal_", "kaiming_uniform_", "uniform_", "normal_"):
        monkeypatch.setattr(mv.nn.init, fn, lambda t, *a, **k: t)
    names = timm.list_models("volo*")
    assert len(names) == 11 and set(names) <= set(list_models())
    for name in [n for n in names if not n.endswith("_224")]:  # the 224s: test_parameter_shapes_match_timm
        with torch.device("meta"):
            theirs = timm.create_model(name)
        ours = create_model(name)
        assert ours.num_parameters() == sum(p.numel() for p in theirs.parameters()), name
        assert ours.pos_embed.shape == tuple(theirs.pos_embed.shape), name
    with torch.device("meta"):
        theirs = timm.create_model("volo_d1_224", num_classes=10, img_size=64, in_chans=1)
    ours = mv.models.volo_d1(num_classes=10, img_size=64, in_chans=1)
    assert ours.num_parameters() == sum(p.numel() for p in theirs.parameters())
    assert ours.pos_embed.shape == (1, 4, 4, 384) and ours.head.weight.shape == (10, 384)


# --- (h) checkpoint containers and corrupt files -----------------------------------------------------
def test_load_pretrained_containers_and_errors(timm, tmp_path):
    theirs = timm.models.volo.VOLO(**TINY)
    sd, ref_state = theirs.state_dict(), torch_state(theirs)
    containers = {"ema.pth": {"state_dict_ema": sd, "epoch": 9},
                  "nested.pth.tar": {"model": {"module." + k: v for k, v in sd.items()}, "args": {}}}
    for name, tree in containers.items():
        torch.save(tree, tmp_path / name)
        ours = VOLO(**TINY)
        load_pretrained(ours, str(tmp_path / name))
        for k, v in ours.state_dict().items():
            np.testing.assert_array_equal(v, ref_state[k], err_msg=f"{name}: {k}")
    with pytest.raises(ValueError, match=r"head.weight: expected shape \(7, 32\), got \(5, 32\)"):
        load_pretrained(VOLO(**dict(TINY, num_classes=7)), str(tmp_path / "ema.pth"))
    for name, obj in {"list.pth": [1, 2], "tensor.pth": torch.zeros(3)}.items():
        torch.save(obj, tmp_path / name)
        with pytest.raises(ValueError, match=f"{name}: expected a state_dict .* got"):
            load_pretrained(VOLO(**TINY), str(tmp_path / name))


def test_load_pretrained_shrinks_pos_embed(timm, tmp_path):
    big = timm.models.volo.VOLO(**dict(TINY, img_size=(64, 48)))  # pos_embed grid 8x6
    torch.save(big.state_dict(), tmp_path / "big.pth")
    ours = VOLO(**TINY)  # 4x4
    load_pretrained(ours, str(tmp_path / "big.pth"))
    ref = torch.nn.functional.interpolate(big.pos_embed.detach().permute(0, 3, 1, 2), size=(4, 4), mode="bicubic",
                                          align_corners=False).permute(0, 2, 3, 1)
    assert_close(ours.pos_embed.numpy(), ref.numpy(), 1e-6, "pos_embed 8x6 -> 4x4")
