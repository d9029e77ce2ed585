"""Layer benchmark script: a tiny run prints one table row with time and memory ratios."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _run(*options: str) -> str:
    command = [
        sys.executable, str(REPO / "benchmarks" / "bench_layer.py"), "--channels", "4", "--sizes", "24",
        "--kernels", "3", "--repeats", "1", "--warmup", "0", "--threads", "1", *options,
    ]
    return subprocess.run(command, capture_output=True, text=True, check=True, cwd=REPO).stdout


def test_layer_benchmark_prints_row_with_memory():
    output = _run()
    rows = [line for line in output.splitlines() if line.startswith("| 4 | 24 | 3 |")]

    assert "glibc mmap threshold 128 KiB" in output
    assert len(rows) == 1
    cells = [cell.strip() for cell in rows[0].strip("|").split("|")]
    assert cells[3] in ("dense", "rings", "spectral")
    assert float(cells[5]) > 0
    assert float(cells[9]) > 0


def test_layer_benchmark_malloc_default_and_no_memory():
    assert "glibc default" in _run("--malloc-default", "--no-memory")
    assert "| n/a | n/a |" in _run("--no-memory")
