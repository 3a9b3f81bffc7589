"""ioband: proportional I/O bandwidth control in user space (dm-ioband rebuilt in Python)."""

from ioband._build import install as _install_core

__version__ = "0.1.0"
TARGET_VERSION = (1, 14, 0)

#: Whether the mypyc-compiled scheduling core runs, and why (or why not); see ``ioband._build``.
COMPILED, CORE_BUILD = _install_core()
