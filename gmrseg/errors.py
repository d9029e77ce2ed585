"""Exceptions for problems in user input (files, configs, arguments).

The CLI prints an ``InputError`` as one message without a traceback, so its
text must name the file or value, the rule it broke and what to do.
"""

__all__ = ["InputError"]


class InputError(ValueError):
    """Invalid user input: a file, a dataset folder, a config value or an argument."""
