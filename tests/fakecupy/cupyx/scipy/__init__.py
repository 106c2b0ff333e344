"""fakecupy.cupyx.scipy: only ``special`` is emulated."""
from . import special  # noqa: F401
