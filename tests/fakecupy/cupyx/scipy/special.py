"""fakecupy.cupyx.scipy.special: cupyx.scipy.special's names over scipy.special, under CuPy's rules."""
import sys as _sys

import scipy.special as _special

from ... import _core

_core._populate(_sys.modules[__name__], "cupyx.scipy.special", _special, {})
