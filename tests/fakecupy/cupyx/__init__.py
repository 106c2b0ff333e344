"""fakecupy.cupyx: the part of cupyx that minivolo uses (cupyx.scipy.special), under CuPy's rules."""
from . import scipy  # noqa: F401
