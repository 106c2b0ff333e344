"""VOLO against mathematics, without PyTorch: the fused outlook attention equals the paper's reference,
finite differences, empty batches, the registry, mix-token boxes, clear errors, safetensors parsing.
The comparisons with timm are in test_volo.py.
"""
import json

import numpy as np
import pytest

import minivolo as mv
from minivolo import gradcheck
from minivolo.models import (VOLO, OutlookAttention, create_model, list_models, load_pretrained,
                             mix_token_lambda, outlook_aggregate, read_safetensors, volo_nano, volo_tiny)

# small configurations that still exercise every code path
TINY = dict(layers=(1, 1, 1, 1), embed_dims=(16, 32, 32, 32), num_heads=(2, 4, 4, 4), patch_size=4,
            stem_hidden_dim=8, img_size=32, num_classes=5)


def randn(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape)


# --- (a) outlook attention: fused = reference ---------------------------------------------------------
def run_both(module: OutlookAttention, x: np.ndarray, g: np.ndarray) -> list:
    """Forward + backward of ``module`` with fused=True and fused=False on the same weights: for each,
    (output, input gradient, {parameter name: gradient})."""
    results = []
    for fused in (True, False):
        module.fused = fused
        module.zero_grad()
        t = mv.Tensor(x, requires_grad=True)
        out = module(t)
        out.backward(g)
        results.append((out.numpy(), t.grad.numpy(), {n: p.grad.numpy() for n, p in module.named_parameters()}))
    return results


@pytest.mark.parametrize("H,W", [(7, 5), (5, 9)])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("kernel_size", [3, 5])
def test_fused_outlook_attention_equals_the_reference(kernel_size, stride, H, W):
    """``OutlookAttention(fused=True)`` (outlook_aggregate) and ``fused=False`` (F.unfold, softmax, matmul,
    F.fold, as the paper) agree in values, input and parameter gradients to 1e-12 in float64."""
    dim, heads = 12, 3
    module = OutlookAttention(dim, heads, kernel_size=kernel_size, padding=kernel_size // 2, stride=stride,
                              qkv_bias=True).to(dtype=np.float64)
    x, g = randn(2, H, W, dim, seed=1), randn(2, H, W, dim, seed=2)
    (out, gx, grads), (ref, ref_gx, ref_grads) = run_both(module, x, g)
    assert out.shape == (2, H, W, dim) and len(grads) == 6  # v.weight/bias, attn.weight/bias, proj.weight/bias
    np.testing.assert_allclose(out, ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(gx, ref_gx, rtol=1e-12, atol=1e-12)
    for name in ref_grads:
        np.testing.assert_allclose(grads[name], ref_grads[name], rtol=1e-12, atol=1e-12, err_msg=name)


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("stride", [1, 2])
def test_outlook_attention_gradcheck(fused, stride):
    """Finite differences through the whole block, for the input and every parameter."""
    mv.manual_seed(0)
    module = OutlookAttention(4, 2, kernel_size=3, padding=1, stride=stride, qkv_bias=True,
                              fused=fused).to(dtype=np.float64)
    x = mv.Tensor(randn(1, 5, 3, 4), requires_grad=True)
    gradcheck(lambda x, *params: module(x), x, *module.parameters())


def test_outlook_aggregate_gradcheck():
    """The fused op alone: softmax weights (B, oh, ow, h, k², k²) and values (B, H, W, C)."""
    attn = mv.Tensor(randn(2, 3, 2, 2, 9, 9, seed=1), requires_grad=True)
    v = mv.Tensor(randn(2, 5, 4, 6, seed=2), requires_grad=True)
    gradcheck(lambda a, v: outlook_aggregate(a, v, 3, 1, 2), attn, v)
    with pytest.raises(ValueError, match=r"outlook_aggregate: attn has a 3x2 grid of windows, but v \(5x4\)"):
        outlook_aggregate(attn, v, 3, 1, 1)


@pytest.mark.parametrize("fused", [True, False])
def test_outlook_attention_on_an_empty_batch(fused):
    module = OutlookAttention(8, 2, stride=2, fused=fused).to(dtype=np.float64)
    x = mv.Tensor(np.zeros((0, 5, 5, 8)), requires_grad=True)
    out = module(x)
    out.sum().backward()
    assert out.shape == (0, 5, 5, 8) and x.grad.shape == (0, 5, 5, 8)
    assert not np.any(module.attn.weight.grad.numpy())


def test_volo_on_an_empty_batch():
    model = VOLO(**TINY).eval()
    x = mv.Tensor(np.zeros((0, 3, 32, 32), np.float32), requires_grad=True)
    logits = model(x)
    logits.sum().backward()
    assert logits.shape == (0, 5) and x.grad.shape == (0, 3, 32, 32)
    assert not np.any(model.head.weight.grad.numpy())


def test_outlook_attention_rejects_bad_geometry():
    with pytest.raises(ValueError, match="kernel_size=3, padding=0, stride=1"):
        OutlookAttention(8, 2, kernel_size=3, padding=0, stride=1)(mv.Tensor(np.zeros((1, 5, 5, 8))))


# --- (b) mix-token, registry, errors -------------------------------------------------------------
def test_mix_token_draws_a_box_and_lambda():
    mv.manual_seed(3)
    model = VOLO(**dict(TINY, use_mix_token=True)).train()
    x = mv.Tensor(np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32))
    grid = (4, 4)  # 32 px / patch 4 / pooling 2
    boxes = {model.forward_train(x)[2] for _ in range(3)}
    for bbx1, bby1, bbx2, bby2 in boxes:
        assert 0 <= bbx1 <= bbx2 <= grid[0] and 0 <= bby1 <= bby2 <= grid[1]
    assert mix_token_lambda((1, 0, 3, 2), grid) == model.mix_token_lambda((1, 0, 3, 2)) == 1 - 4 / 16
    with pytest.raises(ValueError, match="bbox"):
        model.eval().forward_train(x, bbox=(0, 0, 1, 1))
    with pytest.raises(ValueError, match="pooled token grid"):
        model.train().forward_train(x, bbox=(0, 0, 5, 1))


def test_mix_token_needs_the_class_token():
    model = VOLO(**dict(TINY, post_layers=None, use_mix_token=True)).train()
    with pytest.raises(ValueError, match="mix-token needs post_layers"):
        model.forward_train(mv.Tensor(np.zeros((2, 3, 32, 32), np.float32)))
    assert model.eval()(mv.Tensor(np.zeros((2, 3, 32, 32), np.float32))).shape == (2, 5)  # as timm


def test_registry_and_small_presets():
    names = list_models()
    for name in ("volo_d1", "volo_d5", "volo_d1_224", "volo_d1_384", "volo_d3_448", "volo_d5_512",
                 "volo_tiny", "volo_nano"):
        assert name in names
    with pytest.raises(ValueError, match="unknown model 'volo_d9'.*volo_d1"):
        create_model("volo_d9")
    assert create_model("volo_d1_384", num_classes=0).pos_embed.shape == (1, 24, 24, 384)
    tiny, nano = volo_tiny(), volo_nano(in_chans=1, num_classes=7, img_size=28)
    assert 0.9e6 < tiny.num_parameters() < 1.1e6
    assert nano.num_parameters() < 0.3e6
    assert nano(mv.Tensor(np.zeros((2, 1, 28, 28), np.float32))).shape == (2, 7)
    with pytest.raises(ValueError, match="does not download"):
        volo_tiny(pretrained=True)


def test_bad_inputs_raise_clear_errors():
    model = VOLO(**TINY)
    with pytest.raises(ValueError, match=r"expected image 32x32 \(img_size\), got 40x48"):
        model(mv.Tensor(np.zeros((1, 3, 40, 48), np.float32)))
    with pytest.raises(ValueError, match=r"expected 3 input channels \(in_chans\), got 1"):
        model(mv.Tensor(np.zeros((1, 1, 32, 32), np.float32)))
    with pytest.raises(ValueError, match=r"4-D image batch \(B, C, H, W\), got shape \(3, 32, 32\)"):
        model(mv.Tensor(np.zeros((3, 32, 32), np.float32)))
    with pytest.raises(ValueError, match="patch_size must be 4, 8 or 16, got 2"):
        VOLO(**dict(TINY, patch_size=2))


# --- (c) safetensors ----------------------------------------------------------------------------
SAFETENSORS_CODES = {np.dtype("<f8"): "F64", np.dtype("<f4"): "F32", np.dtype("<f2"): "F16",
                     np.dtype("<i8"): "I64", np.dtype("<i4"): "I32", np.dtype("u1"): "U8"}


def write_safetensors(path, tensors: dict) -> None:
    """A minimal writer (the format: 8-byte LE header length, JSON header, raw LE data).
    Values are arrays, or ("BF16", uint16 array) for bfloat16 bit patterns."""
    header, chunks, offset = {"__metadata__": {"format": "pt"}}, [], 0
    for name, value in tensors.items():
        code, arr = value if isinstance(value, tuple) else (SAFETENSORS_CODES[value.dtype], value)
        raw = np.ascontiguousarray(arr).tobytes()
        header[name] = {"dtype": code, "shape": list(arr.shape), "data_offsets": [offset, offset + len(raw)]}
        chunks.append(raw)
        offset += len(raw)
    head = json.dumps(header).encode()
    head += b" " * (-len(head) % 8)
    with open(path, "wb") as f:
        f.write(len(head).to_bytes(8, "little") + head + b"".join(chunks))


def test_safetensors_dtypes(tmp_path):
    rng = np.random.default_rng(0)
    f32 = rng.standard_normal((3, 4)).astype(np.float32)
    bf16_bits = (f32.view(np.uint32) >> 16).astype(np.uint16)
    arrays = {"f64": rng.standard_normal(5), "f32": f32, "f16": f32.astype(np.float16),
              "i64": np.arange(6, dtype=np.int64).reshape(2, 3), "i32": np.array([-1, 7], np.int32),
              "u8": np.array([0, 255], np.uint8), "scalar": np.array(2.5, np.float32)}
    write_safetensors(tmp_path / "a.safetensors", {**arrays, "bf16": ("BF16", bf16_bits)})
    back = read_safetensors(str(tmp_path / "a.safetensors"))
    for name, arr in arrays.items():
        assert back[name].dtype == arr.dtype and back[name].shape == arr.shape
        np.testing.assert_array_equal(back[name], arr)
    np.testing.assert_array_equal(back["bf16"], (bf16_bits.astype(np.uint32) << 16).view(np.float32))


def _safetensors_bytes(header) -> bytes:
    head = header if isinstance(header, bytes) else json.dumps(header).encode()
    return len(head).to_bytes(8, "little") + head + bytes(8)


@pytest.mark.parametrize("header,message", [
    (b"", "corrupt safetensors header"),
    (b"[1, 2]", "expected a JSON object, got list"),
    ({"a": {"dtype": "F8_E4M3", "shape": [2], "data_offsets": [0, 2]}}, "unsupported dtype 'F8_E4M3'"),
    ({"a": 3}, "unsupported dtype None"),
    ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 800]}}, "claims bytes 0..800 of 8"),
    ({"a": {"dtype": "F32", "data_offsets": [0, 8]}}, "needs \"shape\""),
    ({"a": {"dtype": "F32", "shape": [-2, -1], "data_offsets": [0, 8]}}, "needs \"shape\""),
    ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0]}}, "\"data_offsets\""),
    ({"__metadata__": {"format": "pt"}}, "no tensors found"),
])
def test_corrupt_safetensors_headers_are_value_errors(tmp_path, header, message):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(_safetensors_bytes(header))
    with pytest.raises(ValueError, match="bad.safetensors") as err:
        load_pretrained(VOLO(**TINY), str(path))
    assert message in str(err.value)
