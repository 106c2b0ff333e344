"""Functional ops on Tensors, named and behaving as ``torch.nn.functional`` (imported as ``F``).

conv.py: unfold, fold, conv2d, avg_pool2d, max_pool2d, pad, interpolate
nn.py:   linear, relu, erf, gelu, softmax, log_softmax, layer_norm, batch_norm, dropout, drop_path,
         cross_entropy, nll_loss, mse_loss
attention.py: scaled_dot_product_attention
"""
from .conv import *  # noqa: F401,F403
from .nn import *  # noqa: F401,F403
from .attention import *  # noqa: F401,F403
