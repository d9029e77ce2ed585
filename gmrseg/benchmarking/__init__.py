"""Benchmarks that train, predict and evaluate end to end: rotation robustness and lateral labels.

Each benchmark module has a ``main(argv) -> int`` entry point used by
``gmrseg benchmark NAME`` and by the scripts in ``benchmarks/``.
"""

__all__: list[str] = []
