"""Atomic writes: the file appears whole or not at all, with ordinary permissions."""

import os
import stat

import pytest

from gmrseg.utils.files import atomic_write_path, save_json_atomic, save_text_atomic


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_written_file_follows_umask(tmp_path, umask):
    previous = os.umask(umask)
    try:
        save_text_atomic(tmp_path / "notes.txt", "hello")
        with atomic_write_path(tmp_path / "seg.nii.gz") as temporary:
            temporary.write_bytes(b"data")
    finally:
        os.umask(previous)
    for name in ("notes.txt", "seg.nii.gz"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o666 & ~umask


def test_failed_write_keeps_old_file(tmp_path):
    target = tmp_path / "report.json"
    save_json_atomic(target, {"dice": 0.5})
    with pytest.raises(RuntimeError):
        with atomic_write_path(target) as temporary:
            temporary.write_text("half")
            raise RuntimeError("writer crashed")
    assert target.read_text() == '{\n  "dice": 0.5\n}\n'
    assert [path.name for path in tmp_path.iterdir()] == ["report.json"]


def test_temporary_keeps_the_double_suffix(tmp_path):
    with atomic_write_path(tmp_path / "sub" / "case.nii.gz") as temporary:
        assert temporary.name.endswith(".nii.gz")
        assert temporary.parent == tmp_path / "sub"
        temporary.write_bytes(b"x")
    assert (tmp_path / "sub" / "case.nii.gz").read_bytes() == b"x"
