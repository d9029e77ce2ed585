"""docker/entrypoint.sh: dispatch to gmrseg, torchrun or another program.

No Docker engine runs in CI, so the script runs here with stand-in ``gmrseg``
and ``torchrun`` executables that print their arguments.
"""

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ENTRYPOINT = REPO / "docker" / "entrypoint.sh"

pytestmark = pytest.mark.skipif(shutil.which("sh") is None, reason="needs a POSIX shell")


@pytest.fixture()
def fake_bin(tmp_path):
    for name in ("gmrseg", "torchrun"):
        script = tmp_path / name
        script.write_text(f'#!/bin/sh\necho "{name} $*"\n')
        script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return tmp_path


def _run(fake_bin, *args, nproc=None):
    env = {"PATH": f"{fake_bin}{os.pathsep}/usr/bin{os.pathsep}/bin"}
    if nproc is not None:
        env["GMRSEG_NPROC_PER_NODE"] = nproc
    return subprocess.run(["sh", str(ENTRYPOINT), *args], capture_output=True, text=True, env=env)


def test_entrypoint_runs_gmrseg(fake_bin):
    result = _run(fake_bin, "predict", "-m", "/data/run", "-i", "/data/a b.nii.gz", "-o", "/data/seg.nii.gz")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "gmrseg predict -m /data/run -i /data/a b.nii.gz -o /data/seg.nii.gz"


def test_entrypoint_without_arguments_shows_help(fake_bin):
    result = _run(fake_bin)
    assert result.stdout.strip() == "gmrseg --help"


def test_entrypoint_uses_torchrun_for_several_processes(fake_bin):
    result = _run(fake_bin, "train", "/data/ds", "-o", "/data/run", nproc="4")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "torchrun --standalone --nproc_per_node=4 -m gmrseg train /data/ds -o /data/run"


def test_entrypoint_rejects_bad_process_count(fake_bin):
    result = _run(fake_bin, "train", "/data/ds", nproc="two")
    assert result.returncode == 2
    assert "GMRSEG_NPROC_PER_NODE" in result.stderr
    assert "'two'" in result.stderr


def test_entrypoint_runs_other_programs(fake_bin):
    result = _run(fake_bin, "echo", "hello")
    assert result.stdout.strip() == "hello"


def test_dockerfile_runs_as_non_root_on_data_volume():
    text = (REPO / "docker" / "Dockerfile").read_text()
    user_lines = [line.split()[1] for line in text.splitlines() if line.startswith("USER ")]
    assert user_lines, "Dockerfile sets no USER"
    assert user_lines[-1].split(":")[0] not in ("root", "0")
    assert 'VOLUME ["/data"]' in text
    assert "gmrseg-entrypoint" in text.split("ENTRYPOINT", 1)[1]
