"""ioband: proportional I/O bandwidth control in user space (dm-ioband rebuilt in Python)."""

__version__ = "0.1.0"
TARGET_VERSION = (1, 14, 0)
