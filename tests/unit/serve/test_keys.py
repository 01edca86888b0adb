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


def test_concurrent_creates_all_store_their_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Eight `keys create` at once: each prints a key only once it is stored, and all eight are stored."""
    import contextlib
    import threading

    barrier = threading.Barrier(8, timeout=1)
    read = KeyFile.load

    def slow_load(self: KeyFile) -> list:  # type: ignore[type-arg]
        keys = read(self)
        # Unlocked, all eight read the same list here and each rename drops the others' keys; locked, only
        # one is ever here at a time and the barrier just times out once.
        with contextlib.suppress(threading.BrokenBarrierError):
            barrier.wait()
        return keys

    monkeypatch.setattr(KeyFile, "load", slow_load)
    printed: dict[str, str] = {}

    def create(i: int) -> None:
        printed[f"k{i}"] = KeyFile(tmp_path / "keys.json").create(f"k{i}")

    threads = [threading.Thread(target=create, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stored = {k["name"]: k["sha256"] for k in json.loads((tmp_path / "keys.json").read_text())["keys"]}
    assert stored == {name: hashlib.sha256(plain.encode()).hexdigest() for name, plain in printed.items()}
    assert len(stored) == 8


def test_the_checker_fails_closed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    file = KeyFile(tmp_path / "keys.json")
    plain = file.create("alice")
    checker = KeyChecker(file)
    assert checker.name_of(f"bearer {plain}") == "alice" and checker.name_of(f"BEARER  {plain} ") == "alice"
    saved = file.path.read_bytes()
    file.path.unlink()
    assert checker.name_of(f"Bearer {plain}") is None and checker.required
    assert checker.problem == f"the keys file {file.path} is missing"
    file.path.write_text('{"keys": "oops"}')
    assert checker.name_of(f"Bearer {plain}") is None
    assert checker.problem is not None and "is not a tuneforge keys file" in checker.problem
    file.path.write_text('{"keys": []}')
    assert checker.name_of(None) is None and checker.required and checker.problem is None
    file.path.write_bytes(saved)
    assert checker.name_of(f"Bearer {plain}") == "alice"
    log = capsys.readouterr().err.splitlines()
    assert log[0] == (
        f"tuneforge serve: the keys file {file.path} is missing: every request is refused until it is "
        "readable again"
    )
    assert log[-1] == f"tuneforge serve: the keys file {file.path} is readable again: requests are served"


def test_a_name_must_be_one_printable_line(tmp_path: Path) -> None:
    file = KeyFile(tmp_path / "keys.json")
    for name in ("", "  ", "a\nb", "x" * 65):
        with pytest.raises(TuneforgeError, match=r"a key needs a name|printable and at most 64"):
            file.create(name)
    assert not file.path.exists()


def test_reviewer_keys_are_marked_and_older_files_still_load(tmp_path: Path) -> None:
    old = tmp_path / "old.json"  # written before reviewer keys existed
    old.write_text(json.dumps({"keys": [{"name": "alice", "sha256": "ab" * 32, "created": "2026-01-01"}]}))
    assert [(k.name, k.reviewer) for k in KeyFile(old).load()] == [("alice", False)]
    file = KeyFile(tmp_path / "keys.json")
    file.create("alice")
    file.create("rita", reviewer=True)
    stored = json.loads(file.path.read_text())["keys"]
    assert ["reviewer" in k for k in stored] == [False, True]  # a file without reviewers is as before
    checker = KeyChecker(file)
    assert checker.reviewers == {"rita"}
    file.revoke("rita")
    assert checker.name_of("Bearer x") is None and checker.reviewers == set()
