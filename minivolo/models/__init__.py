"""Models: VOLO's architecture (``volo.py``), the presets by name (``registry.py``), mix-token
(``mix_token.py``), configuration checks (``geometry.py``) and checkpoint loading (``pretrained.py``)."""
from .mix_token import mix_token_lambda, rand_bbox
from .pretrained import load_pretrained, read_safetensors, read_state_dict, resize_pos_embed, save_npz
from .registry import (PRETRAINED_URLS, create_model, list_models, register_model, volo_d1, volo_d1_224,
                       volo_d1_384, volo_d2, volo_d2_224, volo_d2_384, volo_d3, volo_d3_224, volo_d3_448, volo_d4,
                       volo_d4_224, volo_d4_448, volo_d5, volo_d5_224, volo_d5_448, volo_d5_512, volo_nano,
                       volo_tiny)
from .volo import (VOLO, Attention, ClassAttention, ClassBlock, Downsample, Mlp, OutlookAttention, Outlooker,
                   PatchEmbed, Transformer, outlook_aggregate, outlook_attention)
