"""API keys: only hashes on disk, revocation seen by a running checker, duplicate names refused."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from tuneforge.errors import TuneforgeError
from tuneforge.serve.keys import KeyChecker, KeyFile


def test_keys_are_stored_hashed_and_checked(tmp_path: Path) -> None:
    file = KeyFile(tmp_path / "keys.json")
    checker = KeyChecker(file)
    assert not checker.required and checker.name_of(None) is None
    plain = file.create("alice")
    stored = json.loads(file.path.read_text())["keys"]
    assert plain not in file.path.read_text()
    assert stored[0]["sha256"] == hashlib.sha256(plain.encode()).hexdigest() and stored[0]["name"] == "alice"
    assert (file.path.stat().st_mode & 0o777) == 0o600
    assert checker.name_of(f"Bearer {plain}") == "alice" and checker.required
    assert checker.name_of(f"Bearer {plain}x") is None and checker.name_of(plain) is None
    file.revoke("alice")
    assert checker.name_of(f"Bearer {plain}") is None and checker.required  # still locked: no open door


def test_names_must_be_unique_among_active_keys(tmp_path: Path) -> None:
    file = KeyFile(tmp_path / "keys.json")
    file.create("ci")
    with pytest.raises(TuneforgeError, match="an active key named 'ci' already exists"):
        file.create("ci")
    file.revoke("ci")
    file.create("ci")  # a revoked name may be reused
    with pytest.raises(TuneforgeError, match="no active key named 'nobody'"):
        file.revoke("nobody")


def test_a_foreign_file_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "keys.json").write_text('{"something": 1}')
    with pytest.raises(TuneforgeError, match="is not a tuneforge keys file"):
        KeyFile(tmp_path / "keys.json").load()
