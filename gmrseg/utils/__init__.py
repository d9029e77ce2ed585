"""Small helpers shared by every part of gmrseg: atomic files, devices, logging."""

from gmrseg.utils.device import resolve_device
from gmrseg.utils.files import atomic_write_path, save_json_atomic, save_text_atomic

__all__ = ["atomic_write_path", "resolve_device", "save_json_atomic", "save_text_atomic"]
