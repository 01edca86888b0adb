"""API keys: created once (the plain key is shown once), stored only as SHA-256 hashes with a name and time.

A key is 32 random bytes, so a plain SHA-256 is enough (a slow password hash protects guessable secrets, not
random ones) and lets every request be checked in microseconds.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from tuneforge.artifacts import read_json, write_json_atomic
from tuneforge.errors import TuneforgeError

PREFIX = "tf-"


@dataclass
class ApiKey:
    name: str
    sha256: str
    created: str
    revoked: str | None = None


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

    def _save(self, keys: list[ApiKey]) -> None:
        write_json_atomic(self.path, {"keys": [asdict(k) for k in keys]})
        self.path.chmod(0o600)  # hashes only, but nobody else needs to read them

    def create(self, name: str) -> str:
        """A new key named `name`; returns the plain key (it is not stored and cannot be shown again)."""
        keys = self.load()
        if not name or any(k.name == name and k.revoked is None for k in keys):
            raise TuneforgeError(
                f"an active key named {name!r} already exists" if name else "a key needs a name",
                where=str(self.path),
                fix="choose another name, or revoke the old key first: tuneforge keys revoke NAME",
            )
        plain = PREFIX + secrets.token_urlsafe(32)
        keys.append(ApiKey(name, _hash(plain), datetime.now(UTC).isoformat(timespec="seconds")))
        self._save(keys)
        return plain

    def revoke(self, name: str) -> None:
        keys = self.load()
        active = [k for k in keys if k.name == name and k.revoked is None]
        if not active:
            raise TuneforgeError(
                f"no active key named {name!r} in {self.path}", fix="see the names with: tuneforge keys list"
            )
        for k in active:
            k.revoked = datetime.now(UTC).isoformat(timespec="seconds")
        self._save(keys)


class KeyChecker:
    """Bearer-token check for the server: the key's name, or None for a missing/unknown/revoked key.

    The file is re-read when it changes, so `tuneforge keys revoke` takes effect on a running server.
    """

    def __init__(self, file: KeyFile) -> None:
        self.file = file
        self.stamp: tuple[int, int] | None = None
        self.active: dict[str, str] = {}
        self.required = False
        self._reload()

    def _reload(self) -> None:
        try:
            st = self.file.path.stat()
            stamp: tuple[int, int] | None = (st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            stamp = None
        if stamp == self.stamp and self.stamp is not None:
            return
        keys = self.file.load()
        self.stamp = stamp
        self.active = {k.sha256: k.name for k in keys if k.revoked is None}
        self.required = bool(keys)  # a file whose keys are all revoked still locks the server

    def name_of(self, authorization: str | None) -> str | None:
        self._reload()
        if not authorization or not authorization.startswith("Bearer "):
            return None
        digest = _hash(authorization[len("Bearer ") :].strip())
        for known, name in self.active.items():
            if hmac.compare_digest(known, digest):
                return name
        return None
