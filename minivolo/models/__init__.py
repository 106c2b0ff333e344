"""Models: VOLO (``volo.py``) and checkpoint loading (``pretrained.py``)."""
from .pretrained import load_pretrained, read_safetensors, read_state_dict, save_npz
from .volo import (VOLO, Attention, ClassAttention, ClassBlock, Downsample, Mlp, OutlookAttention, Outlooker,
                   PatchEmbed, Transformer, create_model, list_models, mix_token_lambda, outlook_aggregate,
                   rand_bbox, register_model, resize_pos_embed, volo_d1, volo_d1_224, volo_d1_384, volo_d2,
                   volo_d2_224, volo_d2_384, volo_d3, volo_d3_224, volo_d3_448, volo_d4, volo_d4_224,
                   volo_d4_448, volo_d5, volo_d5_224, volo_d5_448, volo_d5_512, volo_nano, volo_tiny)
