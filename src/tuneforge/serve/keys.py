"""API keys: created once (the plain key is shown once), stored only as SHA-256 hashes with a name and time.

A key is 32 random bytes, so a plain SHA-256 is enough (a slow password hash protects guessable secrets, not
random ones) and lets every request be checked in microseconds.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from tuneforge.artifacts import atomic_file, read_json
from tuneforge.errors import TuneforgeError

PREFIX = "tf-"
NAME_MAX = 64
LOCK_TIMEOUT_S = 30.0


@dataclass
class ApiKey:
    name: str
    sha256: str
    created: str
    revoked: str | None = None
    reviewer: bool = False
    """May give feedback on any request, not only its own (a files written before this field: False)."""


def _hash(plain: str) -> str:
    return hashlib.sha256(plain.encode("utf-8")).hexdigest()


class KeyFile:
    """The keys of one deployment, in a JSON file written atomically."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).expanduser()

    def load(self) -> list[ApiKey]:
        if not self.path.is_file():
            return []
        try:
            rows = read_json(self.path)["keys"]
            return [ApiKey(**r) for r in rows]
        except (KeyError, TypeError, ValueError) as err:
            raise TuneforgeError(
                f"{self.path} is not a tuneforge keys file ({err})",
                where="serve.keys_file",
                fix="point serve.keys_file (--keys) at the file `tuneforge keys create` wrote",
            ) from None

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """Hold the keys file's lock: concurrent `keys create`/`revoke` each see the other's key.

        Without it two commands read the same list and the second rename drops the first one's key.
        """
        from filelock import FileLock, Timeout

        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(self.path.with_name(f".{self.path.name}.lock"), timeout=LOCK_TIMEOUT_S)
        try:
            with lock:
                yield
        except Timeout:
            raise TuneforgeError(
                f"another `tuneforge keys` command has held {self.path} for {LOCK_TIMEOUT_S:g} s",
                where=str(self.path),
                fix="wait for it to finish and run the command again",
            ) from None

    def _save(self, keys: list[ApiKey]) -> None:
        with atomic_file(self.path, "w") as f:
            os.fchmod(f.fileno(), 0o600)  # hashes only, but nobody else needs to read them, not even briefly
            rows = [_row(k) for k in keys]
            f.write(json.dumps({"keys": rows}, indent=2, ensure_ascii=False) + "\n")

    def create(self, name: str, *, reviewer: bool = False) -> str:
        """A new key named `name`; returns the plain key (it is not stored and cannot be shown again)."""
        _check_name(name, self.path)
        plain = PREFIX + secrets.token_urlsafe(32)
        digest = _hash(plain)
        with self._locked():
            keys = self.load()
            if any(k.name == name and k.revoked is None for k in keys):
                raise TuneforgeError(
                    f"an active key named {name!r} already exists",
                    where=str(self.path),
                    fix="choose another name, or revoke the old key first: tuneforge keys revoke NAME",
                )
            created = datetime.now(UTC).isoformat(timespec="seconds")
            keys.append(ApiKey(name, digest, created, reviewer=reviewer))
            self._save(keys)
            # Read back: a key is shown only once it is on disk (a key shown but lost would fail silently).
            if not any(k.sha256 == digest and k.revoked is None for k in self.load()):
                raise TuneforgeError(f"the new key could not be stored in {self.path}", where=str(self.path))
        return plain

    def revoke(self, name: str) -> None:
        with self._locked():
            keys = self.load()
            active = [k for k in keys if k.name == name and k.revoked is None]
            if not active:
                raise TuneforgeError(
                    f"no active key named {name!r} in {self.path}",
                    fix="see the names with: tuneforge keys list",
                )
            for k in active:
                k.revoked = datetime.now(UTC).isoformat(timespec="seconds")
            self._save(keys)


def _row(key: ApiKey) -> dict[str, object]:
    """A key as stored: `reviewer` only where set (older versions read a file without reviewers)."""
    row = asdict(key)
    if not key.reviewer:
        del row["reviewer"]
    return row


def _check_name(name: str, path: Path) -> None:
    """A name is shown in tables and stored in log rows: printable, one line, at most NAME_MAX characters."""
    if not name.strip():
        raise TuneforgeError("a key needs a name", where=str(path), fix="tuneforge keys create NAME")
    if len(name) > NAME_MAX or not name.isprintable():
        raise TuneforgeError(
            f"a key name must be printable and at most {NAME_MAX} characters",
            where=str(path),
            fix="choose a short name such as the person's or service's name",
        )


class KeyChecker:
    """Bearer-token check for the server: the key's name, or None for a missing/unknown/revoked key.

    The file is re-read when it changes, so `tuneforge keys revoke` takes effect on a running server. It
    fails closed: once any key existed, a request without a valid key is refused for the rest of the server's
    life, whatever later happens to the file; while the file is missing (after it held keys) or unreadable,
    `problem` says why, the server log says so once, and every request is refused.
    """

    def __init__(self, file: KeyFile) -> None:
        self.file = file
        keys = file.load()  # at start-up an unreadable file stops the server with one line
        self.stamp = _stamp(file.path)
        self.active = _active(keys)
        self.reviewers = _reviewers(keys)
        self.required = bool(keys)  # a file whose keys are all revoked still locks the server
        self.problem: str | None = None

    def refresh(self) -> None:
        """Re-read the file if it changed (a cheap stat otherwise); sets `problem` while it is unusable."""
        path = self.file.path
        try:
            stamp = _stamp(path)
        except OSError as err:
            self._unusable(f"the keys file {path} cannot be read ({err.strerror or err})")
            return
        if stamp is None:
            self.stamp = None
            if self.required:
                self._unusable(f"the keys file {path} is missing")
            else:
                self.active = {}
                self._set_problem(None)
            return
        if stamp == self.stamp:
            return
        self.stamp = stamp  # a broken file is read again only once it changes
        try:
            keys = self.file.load()
        except (TuneforgeError, OSError) as err:
            why = err.what if isinstance(err, TuneforgeError) else (err.strerror or str(err))
            self._unusable(f"the keys file {path} cannot be read ({why})")
            return
        self.active = _active(keys)
        self.reviewers = _reviewers(keys)
        self.required = self.required or bool(keys)  # never back to open: `{"keys": []}` locks everyone out
        self._set_problem(None)

    def _unusable(self, problem: str) -> None:
        self.active = {}
        self.reviewers = set()
        self._set_problem(problem)

    def _set_problem(self, problem: str | None) -> None:
        if problem != self.problem:
            line = (
                f"{problem}: every request is refused until it is readable again"
                if problem
                else f"the keys file {self.file.path} is readable again: requests are served"
            )
            print(f"tuneforge serve: {line}", file=sys.stderr, flush=True)
        self.problem = problem

    def name_of(self, authorization: str | None) -> str | None:
        self.refresh()
        # The scheme is case-insensitive (RFC 7235): "bearer KEY" is as good as "Bearer KEY".
        scheme, _, token = (authorization or "").strip().partition(" ")
        if self.problem is not None or scheme.lower() != "bearer" or not token.strip():
            return None
        digest = _hash(token.strip())
        for known, name in self.active.items():
            if hmac.compare_digest(known, digest):
                return name
        return None


def _stamp(path: Path) -> tuple[int, int, int, int] | None:
    """What changes when the file is replaced, rewritten or re-permissioned (ctime: a chmod back)."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_ctime_ns, st.st_size)


def _active(keys: list[ApiKey]) -> dict[str, str]:
    return {k.sha256: k.name for k in keys if k.revoked is None}


def _reviewers(keys: list[ApiKey]) -> set[str]:
    """Names of the active reviewer keys (a name is unique among active keys)."""
    return {k.name for k in keys if k.revoked is None and k.reviewer}
