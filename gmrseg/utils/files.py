"""Atomic file writing: write to a temporary file in the target folder, then rename.

A crash or a kill at any point leaves either the old file or the new one,
never a partial file, because ``os.replace`` is atomic within one file system.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

__all__ = ["atomic_write_path", "save_json_atomic", "save_text_atomic"]


@contextlib.contextmanager
def atomic_write_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` on success.

    The temporary file keeps the final name's suffix (for example ``.nii.gz``)
    so that writers which pick a format from the file name behave as they would
    on ``path``. On an exception the temporary file is removed and ``path`` is
    left untouched.

    Args:
        path: final destination. Its parent folder is created if missing.
        suffix: suffix of the temporary file; defaults to the full suffix of
            ``path`` (``.nii.gz`` for ``case.nii.gz``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix is None:
        suffix = "".join(path.suffixes) if path.name.count(".") else ""

    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{suffix}", dir=path.parent)
    os.close(handle)
    temporary = Path(temporary)
    try:
        yield temporary
        os.chmod(temporary, 0o666 & ~_current_umask())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()
        raise


def _current_umask() -> int:
    """Return the process umask. ``os.umask`` reads it only by setting a new one, so the old one is set back."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def save_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_write_path(path) as temporary:
        temporary.write_text(text, encoding="utf-8")


def save_json_atomic(path: str | os.PathLike, data: Any) -> None:
    """Write ``data`` as indented JSON (UTF-8, non-ASCII kept) to ``path`` atomically."""
    save_text_atomic(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")
