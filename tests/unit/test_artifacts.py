"""Atomic writes publish files and folders with ordinary permissions (not the private ones of temp files)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from tuneforge.artifacts import atomic_dir, write_json_atomic


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_atomic_outputs_follow_the_umask(tmp_path: Path) -> None:
    umask = os.umask(0)
    os.umask(umask)
    assert umask & 0o044 == 0, "the test needs a umask that lets the group and others read"
    write_json_atomic(tmp_path / "a.json", {"x": 1})
    with atomic_dir(tmp_path / "run") as tmp:
        write_json_atomic(tmp / "manifest.json", {})
    assert mode(tmp_path / "a.json") == 0o666 & ~umask  # mkstemp alone would leave 0o600
    assert mode(tmp_path / "run") == 0o777 & ~umask  # mkdtemp alone would leave 0o700
    assert mode(tmp_path / "run" / "manifest.json") == 0o666 & ~umask
