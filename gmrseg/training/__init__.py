"""Training: configs, the training loop, checkpoints and multi-GPU runs.

``train`` (in ``gmrseg.training.run``) is what ``gmrseg train`` calls;
``load_config`` reads a YAML file or a preset from ``gmrseg/configs``.
"""

from gmrseg.training.config import Config, load_config
from gmrseg.training.run import train

__all__ = ["Config", "load_config", "train"]
