"""Model factories by name, as timm: ``create_model("volo_d1_224", num_classes=10)``.

Each preset is a plain function ``volo_d1(pretrained=False, **kwargs)`` that builds ``VOLO`` from its
configuration (keyword arguments override it) and, when ``pretrained`` is a checkpoint path, loads it.
"""
from __future__ import annotations

from typing import Callable

from .volo import VOLO

__all__ = ["PRETRAINED_URLS", "register_model", "list_models", "create_model", "volo_d1", "volo_d2", "volo_d3",
           "volo_d4", "volo_d5", "volo_tiny", "volo_nano", "volo_d1_224", "volo_d1_384", "volo_d2_224",
           "volo_d2_384", "volo_d3_224", "volo_d3_448", "volo_d4_224", "volo_d4_448", "volo_d5_224",
           "volo_d5_448", "volo_d5_512"]

_registry: dict = {}

# Official weights (sail-sg/volo releases; also on the Hugging Face hub as timm/volo_*.sail_in1k).
PRETRAINED_URLS = {
    "volo_d1_224": "https://github.com/sail-sg/volo/releases/download/volo_1/d1_224_84.2.pth.tar",
    "volo_d1_384": "https://github.com/sail-sg/volo/releases/download/volo_1/d1_384_85.2.pth.tar",
    "volo_d2_224": "https://github.com/sail-sg/volo/releases/download/volo_1/d2_224_85.2.pth.tar",
    "volo_d2_384": "https://github.com/sail-sg/volo/releases/download/volo_1/d2_384_86.0.pth.tar",
    "volo_d3_224": "https://github.com/sail-sg/volo/releases/download/volo_1/d3_224_85.4.pth.tar",
    "volo_d3_448": "https://github.com/sail-sg/volo/releases/download/volo_1/d3_448_86.3.pth.tar",
    "volo_d4_224": "https://github.com/sail-sg/volo/releases/download/volo_1/d4_224_85.7.pth.tar",
    "volo_d4_448": "https://github.com/sail-sg/volo/releases/download/volo_1/d4_448_86.79.pth.tar",
    "volo_d5_224": "https://github.com/sail-sg/volo/releases/download/volo_1/d5_224_86.10.pth.tar",
    "volo_d5_448": "https://github.com/sail-sg/volo/releases/download/volo_1/d5_448_87.0.pth.tar",
    "volo_d5_512": "https://github.com/sail-sg/volo/releases/download/volo_1/d5_512_87.07.pth.tar",
}


def register_model(fn: Callable) -> Callable:
    _registry[fn.__name__] = fn
    return fn


def list_models() -> list:
    return sorted(_registry)


def create_model(name: str, pretrained=False, **kwargs) -> VOLO:
    """``create_model("volo_d1_224", num_classes=10)``; ``pretrained`` is a checkpoint path (or False)."""
    if name not in _registry:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(list_models())}")
    return _registry[name](pretrained=pretrained, **kwargs)


def _build(name: str, config: dict, pretrained, kwargs: dict) -> VOLO:
    """``VOLO(**config)`` with ``kwargs`` overriding the config, then the weights of ``pretrained`` (a
    checkpoint path) when it is given."""
    if pretrained is True:
        url = PRETRAINED_URLS.get(name, "https://github.com/sail-sg/volo/releases")
        raise ValueError(f"minivolo does not download weights: download {url} and pass "
                         f"pretrained='path/to/checkpoint' to {name}()")
    model = VOLO(**{**config, **kwargs})
    if pretrained:
        from .pretrained import load_pretrained
        load_pretrained(model, pretrained)
    return model


# --- the configurations (timm's; mlp_ratio 3, stem_hidden_dim 64, patch 8 unless said) ------------------
_D1 = dict(layers=(4, 4, 8, 2), embed_dims=(192, 384, 384, 384), num_heads=(6, 12, 12, 12))     # 26.6M params
_D2 = dict(layers=(6, 4, 10, 4), embed_dims=(256, 512, 512, 512), num_heads=(8, 16, 16, 16))    # 58.7M
_D3 = dict(layers=(8, 8, 16, 4), embed_dims=(256, 512, 512, 512), num_heads=(8, 16, 16, 16))    # 86.3M
_D4 = dict(layers=(8, 8, 16, 4), embed_dims=(384, 768, 768, 768), num_heads=(12, 16, 16, 16))   # 193.0M
_D5 = dict(layers=(12, 12, 20, 4), embed_dims=(384, 768, 768, 768), num_heads=(12, 16, 16, 16),
           mlp_ratio=4, stem_hidden_dim=128)                                                   # 295.5M
# Small presets for 28-32 px images (MNIST, CIFAR): patch 4, so the outlookers see an 8x8 token grid at 32 px.
_TINY = dict(layers=(1, 1, 1, 1), embed_dims=(64, 128, 128, 128), num_heads=(2, 4, 4, 4), patch_size=4,
             stem_hidden_dim=32, img_size=32, num_classes=10)                                  # 0.94M
_NANO = dict(layers=(1, 1, 1, 1), embed_dims=(32, 64, 64, 64), num_heads=(1, 2, 2, 2), patch_size=4,
             stem_hidden_dim=16, img_size=32, num_classes=10)                                  # 0.25M


# --- the presets: VOLO-D1 ... D5 at 224 px (parameter counts above), and two small ones -------------------
def volo_d1(pretrained=False, **kwargs) -> VOLO: return _build("volo_d1", _D1, pretrained, kwargs)
def volo_d2(pretrained=False, **kwargs) -> VOLO: return _build("volo_d2", _D2, pretrained, kwargs)
def volo_d3(pretrained=False, **kwargs) -> VOLO: return _build("volo_d3", _D3, pretrained, kwargs)
def volo_d4(pretrained=False, **kwargs) -> VOLO: return _build("volo_d4", _D4, pretrained, kwargs)
def volo_d5(pretrained=False, **kwargs) -> VOLO: return _build("volo_d5", _D5, pretrained, kwargs)
def volo_tiny(pretrained=False, **kwargs) -> VOLO: return _build("volo_tiny", _TINY, pretrained, kwargs)
def volo_nano(pretrained=False, **kwargs) -> VOLO: return _build("volo_nano", _NANO, pretrained, kwargs)


for _preset in (volo_d1, volo_d2, volo_d3, volo_d4, volo_d5, volo_tiny, volo_nano):
    register_model(_preset)


def _at_resolution(name: str, config: dict, img_size: int) -> Callable:
    """The preset ``name`` = ``config`` at ``img_size`` px (timm's per-resolution names)."""
    def factory(pretrained=False, **kwargs) -> VOLO:
        return _build(name, {**config, "img_size": img_size}, pretrained, kwargs)
    factory.__name__ = factory.__qualname__ = name
    factory.__doc__ = f"{name[:7].upper().replace('_', '-')} at {img_size} px (weights: PRETRAINED_URLS[{name!r}])."
    return register_model(factory)


# timm's names, one per released resolution (the keys of PRETRAINED_URLS)
volo_d1_224 = _at_resolution("volo_d1_224", _D1, 224)
volo_d1_384 = _at_resolution("volo_d1_384", _D1, 384)
volo_d2_224 = _at_resolution("volo_d2_224", _D2, 224)
volo_d2_384 = _at_resolution("volo_d2_384", _D2, 384)
volo_d3_224 = _at_resolution("volo_d3_224", _D3, 224)
volo_d3_448 = _at_resolution("volo_d3_448", _D3, 448)
volo_d4_224 = _at_resolution("volo_d4_224", _D4, 224)
volo_d4_448 = _at_resolution("volo_d4_448", _D4, 448)
volo_d5_224 = _at_resolution("volo_d5_224", _D5, 224)
volo_d5_448 = _at_resolution("volo_d5_448", _D5, 448)
volo_d5_512 = _at_resolution("volo_d5_512", _D5, 512)
