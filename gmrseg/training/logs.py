"""Log routing for one training fold: ``train.log`` and epoch summaries.

Every ``gmrseg`` log record emitted while a fold trains is copied into
``FOLD_DIR/train.log``. Epoch summaries go to the ``gmrseg.training.epochs``
logger, which writes to ``train.log`` and, unless ``quiet``, to stderr. It
does not propagate, so ``--quiet`` hides them on the terminal only.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from pathlib import Path
from typing import Iterator

__all__ = ["EPOCH_LOGGER_NAME", "fold_logging"]

EPOCH_LOGGER_NAME = "gmrseg.training.epochs"
_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


@contextlib.contextmanager
def fold_logging(fold_dir: Path | None, *, quiet: bool, is_main: bool) -> Iterator[logging.Logger]:
    """Route logs for one fold; yield the epoch-summary logger.

    Args:
        fold_dir: folder of ``train.log`` (appended to, so a resumed run keeps
            its earlier lines); ``None`` writes no file.
        quiet: hide epoch summaries on stderr.
        is_main: False on torchrun ranks other than 0, which log nothing.
    """
    package_logger = logging.getLogger("gmrseg")
    epoch_logger = logging.getLogger(EPOCH_LOGGER_NAME)
    epoch_logger.propagate = False
    saved_level = epoch_logger.level
    added: list[tuple[logging.Logger, logging.Handler]] = []

    if is_main:
        epoch_logger.setLevel(logging.INFO)
        if fold_dir is not None:
            file_handler = logging.FileHandler(Path(fold_dir) / "train.log", encoding="utf-8")
            file_handler.setFormatter(logging.Formatter(_FORMAT, datefmt="%Y-%m-%d %H:%M:%S"))
            file_handler.setLevel(logging.INFO)
            added += [(package_logger, file_handler), (epoch_logger, file_handler)]
        if not quiet:
            stream_handler = logging.StreamHandler(sys.stderr)
            stream_handler.setFormatter(logging.Formatter(_FORMAT, datefmt="%H:%M:%S"))
            added.append((epoch_logger, stream_handler))
    else:
        epoch_logger.setLevel(logging.CRITICAL + 1)

    # The package logger must pass INFO records on to train.log even when the
    # root logger is at WARNING (library use without logging configured).
    saved_package_level = package_logger.level
    if is_main and fold_dir is not None and (package_logger.getEffectiveLevel() > logging.INFO):
        package_logger.setLevel(logging.INFO)

    for logger, handler in added:
        logger.addHandler(handler)
    try:
        yield epoch_logger
    finally:
        for logger, handler in added:
            logger.removeHandler(handler)
        for handler in {handler for _, handler in added}:
            handler.close()
        epoch_logger.setLevel(saved_level)
        package_logger.setLevel(saved_package_level)
