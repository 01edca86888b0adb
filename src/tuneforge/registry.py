"""The model registry as a directory contract, shared like artifacts.py (serve may read it, retrain write).

    REGISTRY/NAME/versions/N/version.json   one registered run: its path, eval numbers, data fingerprint
    REGISTRY/NAME/champion.json             the pointer: the champion and the champions before it
    REGISTRY/NAME/history.jsonl             every registration, promotion and rollback, and why
    REGISTRY/NAME/registry.lock             flock: one change to a registry at a time

A version folder appears by one rename (atomic_dir) and never changes afterwards; the pointer is switched
by replacing champion.json atomically (temporary sibling, fsync, rename), so a reader sees the old champion
or the new one, never a half-written file. History is appended (and synced) before the pointer moves: a
change killed half-way leaves a history line too many, never a pointer nobody recorded.

With $TUNEFORGE_REGISTRY_MLFLOW set, every change is first mirrored to the MLflow Model Registry
(registry_mlflow.py): an MLflow failure refuses the change before the folder is touched.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tuneforge.artifacts import FILE_MODE, RunDir, atomic_dir, read_json, read_jsonl, write_json_atomic
from tuneforge.errors import TuneforgeError
from tuneforge.registry_mlflow import mirror_for

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
VERSION_KIND = "tuneforge.registry-version"

# Registry folders whose lock this thread holds: a retrain holds the lock from start to end and registers and
# promotes inside it. flock cannot be taken twice through two descriptors, even by one process.
_held = threading.local()


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _eval_numbers(run: RunDir) -> dict[str, dict[str, float]]:
    """The tuned model's scalar metrics per evaluated split (eval/<split>.json)."""
    out: dict[str, dict[str, float]] = {}
    if not run.eval_dir.is_dir():
        return out
    for p in sorted(run.eval_dir.glob("*.json")):
        data = read_json(p)
        tuned = data.get("tuned") if isinstance(data, dict) else None
        if isinstance(tuned, dict) and "split" in data:
            metrics = tuned.get("metrics", tuned)
            out[str(data["split"])] = {
                k: float(v)
                for k, v in metrics.items()
                if isinstance(v, int | float) and not isinstance(v, bool)
            }
    return out


@dataclass(frozen=True)
class Registry:
    """One named model's registry folder."""

    path: Path

    @classmethod
    def at(cls, root: Path, name: str) -> Registry:
        if not NAME.match(name):
            raise TuneforgeError(
                f"{name!r} is not a registry name",
                fix="use letters, digits, '.', '_' and '-' (at most 100, starting with a letter or digit)",
            )
        return cls(Path(root) / name)

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def versions_dir(self) -> Path:
        return self.path / "versions"

    @property
    def pointer(self) -> Path:
        return self.path / "champion.json"

    @property
    def history_path(self) -> Path:
        return self.path / "history.jsonl"

    def exists(self) -> bool:
        return self.versions_dir.is_dir()

    def _require(self) -> None:
        if not self.exists():
            raise TuneforgeError(
                f"there is no registry {self.name!r} in {self.path.parent}",
                fix=f"register a run first: tuneforge registry register {self.name} RUN",
            )

    def versions(self) -> list[dict[str, Any]]:
        """Every registered version, oldest first."""
        if not self.versions_dir.is_dir():
            return []
        found = [
            p for p in self.versions_dir.iterdir() if p.name.isdigit() and (p / "version.json").is_file()
        ]
        return [dict(read_json(p / "version.json")) for p in sorted(found, key=lambda p: int(p.name))]

    def version(self, n: int) -> dict[str, Any]:
        p = self.versions_dir / str(n) / "version.json"
        if not p.is_file():
            known = ", ".join(str(v["version"]) for v in self.versions()) or "none"
            raise TuneforgeError(
                f"registry {self.name!r} has no version {n} (versions: {known})",
                fix=f"see them with: tuneforge registry show {self.name}",
            )
        return dict(read_json(p))

    def run_path(self, record: dict[str, Any]) -> Path:
        """Where a version's run is now: its recorded path, or (when no run is there) the place its path
        relative to the registry points to, so a workspace moved whole keeps its registry."""
        recorded = Path(str(record["run"]))
        relative = record.get("run_relative")
        if not RunDir.is_run(recorded) and relative and RunDir.is_run(self.path / relative):
            return Path(os.path.normpath(self.path.resolve() / relative))
        return recorded

    def champion(self) -> dict[str, Any] | None:
        """The pointer ({"version", "stack", "time", "reason"}), None before any promotion."""
        if not self.pointer.is_file():
            return None
        try:
            data = json.loads(self.pointer.read_text(encoding="utf-8"))
            version = int(data["version"])
            stack = [int(v) for v in data["stack"]]
            if not stack or stack[-1] != version or not (self.versions_dir / str(version)).is_dir():
                raise ValueError("pointer names no registered version")
        except (ValueError, KeyError, TypeError) as err:
            last = next((h for h in reversed(self.history()) if h["action"] in ("promote", "rollback")), None)
            hint = (
                f"tuneforge registry promote {self.name} {last['version']}" if last else "promote a version"
            )
            raise TuneforgeError(
                f"the champion pointer of registry {self.name!r} is corrupt ({err})",
                where=str(self.pointer),
                fix=f"the history holds every promotion; set the champion again: {hint}",
            ) from None
        return {**data, "version": version, "stack": stack}

    def history(self) -> list[dict[str, Any]]:
        return read_jsonl(self.history_path) if self.history_path.is_file() else []

    @contextlib.contextmanager
    def locked(self, holder: str = "", *, nested: bool = False) -> Iterator[None]:
        """One registration, promotion, rollback or retrain at a time (a second one is refused, not queued).

        `holder` (e.g. "a retrain") is written into the lock file so that a refused command can say who holds
        it. `nested`: registrations and promotions this thread makes inside run under this lock (a retrain
        holds it from start to end and registers last); any other attempt is refused as usual.
        """
        held: set[str] = getattr(_held, "paths", set())
        key = str(self.path.resolve())
        if key in held:
            yield
            return
        self.path.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path / "registry.lock", os.O_RDWR | os.O_CREAT, FILE_MODE)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as err:
                if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise
                who = _lock_holder(fd)
                raise TuneforgeError(
                    f"registry {self.name!r} is being changed by another tuneforge process{who}",
                    fix="wait for it to finish, then run the command again",
                ) from None
            os.ftruncate(fd, 0)
            text = json.dumps({"holder": holder or "a registry change", "pid": os.getpid(), "since": _now()})
            os.pwrite(fd, text.encode(), 0)
            _held.paths = held | {key} if nested else held
            try:
                yield
            finally:
                _held.paths = held
        finally:
            os.close(fd)  # releases the flock

    def _record(self, **event: Any) -> None:
        line = json.dumps({"time": _now(), **event}, ensure_ascii=False) + "\n"
        with open(self.history_path, "a", encoding="utf-8") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())

    def record(self, action: str, version: int, reason: str, **details: Any) -> None:
        """Add an event of another command (a retrain's decision) to the history."""
        self._require()
        with self.locked():
            self._record(action=action, version=version, reason=reason, **details)

    def _champion_number(self) -> int | None:
        current = self.champion()
        return int(current["version"]) if current else None

    def _mirror(self, versions: list[dict[str, Any]], champion: int | None) -> None:
        """Mirror the state the folder is about to have (when $TUNEFORGE_REGISTRY_MLFLOW is set)."""
        mirror = mirror_for(self.name)
        if mirror is not None:
            mirror.sync(versions, champion)

    def sync_mirror(self, *, required: bool = True) -> dict[int, int] | None:
        """Bring the MLflow mirror up to the folder (after turning it on, or after a failed mirror).

        Returns tuneforge version → MLflow version; None when no mirror is configured and none is `required`.
        """
        self._require()
        mirror = mirror_for(self.name)
        if mirror is None:
            if not required:
                return None
            raise TuneforgeError(
                "no MLflow registry is configured to mirror to",
                fix="set TUNEFORGE_REGISTRY_MLFLOW to an MLflow URI, e.g. sqlite:///$PWD/mlflow.db",
            )
        with self.locked():
            return mirror.sync(self.versions(), self._champion_number())

    def register(
        self, run_dir: Path, reason: str = "", extra: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """A finished run → the next version (its numbers copied in: the registry outlives eval files).

        `extra` is kept in version.json too (a retrain's decision; its "eval" adds to the run's eval numbers).
        """
        run = RunDir.open(run_dir)
        manifest = run.manifest
        if manifest.get("status") != "completed" or not run.final.is_dir():
            raise TuneforgeError(
                f"run {run.path} has not finished training (status: {manifest.get('status', 'unknown')})",
                fix="register a run that `tuneforge train` completed",
            )
        with self.locked():
            n = max((int(v["version"]) for v in self.versions()), default=0) + 1
            extra = dict(extra or {})
            record: dict[str, Any] = {
                "version": n,
                "run": str(run.path.resolve()),
                "run_relative": os.path.relpath(run.path.resolve(), self.path.resolve()),
                "registered": _now(),
                "reason": reason,
                "task": manifest.get("task"),
                "base_model": manifest.get("base_model"),
                "data_fingerprint": (manifest.get("dataset") or {}).get("fingerprint"),
                "config_fingerprint": manifest.get("config_fingerprint"),
                "eval": {**_eval_numbers(run), **extra.pop("eval", {})},
            }
            record.update(extra)
            # The pointer is read only with a mirror: without one, registering never needs it.
            if mirror_for(self.name) is not None:
                self._mirror([*self.versions(), record], self._champion_number())
            with atomic_dir(self.versions_dir / str(n), kind=VERSION_KIND, replace=False) as tmp:
                write_json_atomic(tmp / "version.json", record)
            self._record(action="register", version=n, run=record["run"], reason=reason)
        return record

    def promote(self, n: int, reason: str) -> dict[str, Any]:
        """Make version `n` the champion; the one before stays on the stack for a rollback."""
        self._require()
        with self.locked():
            self.version(n)
            repaired = False
            try:
                current = self.champion()
            except TuneforgeError:  # a corrupt pointer: promoting is its repair (champion()'s fix says so)
                current, repaired = self._replayed_pointer(), True
            if current is not None and current["version"] == n and not repaired:
                raise TuneforgeError(f"version {n} is already the champion of {self.name!r}")
            stack = [*(current["stack"] if current else []), n]
            if repaired and current is not None and current["version"] == n:
                stack = current["stack"]  # the history already ends with this promotion
            previous = current["version"] if current else None
            self._mirror(self.versions(), n)
            extra = {"repaired_pointer": True} if repaired else {}
            self._record(action="promote", version=n, previous=previous, reason=reason, **extra)
            pointer = {"version": n, "stack": stack, "time": _now(), "reason": reason}
            write_json_atomic(self.pointer, pointer)
        return pointer

    def _replayed_pointer(self) -> dict[str, Any] | None:
        """The champion stack as the history's promotions and rollbacks built it (to repair a corrupt pointer;
        a promotion killed before its pointer moved is in the history too, so this is the best guess, not
        the last pointer)."""
        stack: list[int] = []
        for event in self.history():
            if event.get("action") == "promote":
                stack.append(int(event["version"]))
            elif event.get("action") == "rollback" and stack:
                stack.pop()
        stack = [v for v in stack if (self.versions_dir / str(v)).is_dir()]
        return {"version": stack[-1], "stack": stack} if stack else None

    def rollback(self, reason: str) -> dict[str, Any]:
        """Give the championship back to the champion before the current one."""
        self._require()
        with self.locked():
            current = self.champion()
            if current is None or len(current["stack"]) < 2:
                raise TuneforgeError(
                    f"registry {self.name!r} has no earlier champion to roll back to",
                    fix=f"promote a version instead: tuneforge registry promote {self.name} N",
                )
            stack = current["stack"][:-1]
            self._mirror(self.versions(), stack[-1])
            self._record(action="rollback", version=stack[-1], previous=current["version"], reason=reason)
            pointer = {"version": stack[-1], "stack": stack, "time": _now(), "reason": reason}
            write_json_atomic(self.pointer, pointer)
        return pointer


def _lock_holder(fd: int) -> str:
    """ " (a retrain, pid 12, since ...)" from the lock file, or "" when it says nothing readable."""
    try:
        data = json.loads(os.pread(fd, 4096, 0).decode("utf-8"))
        return f" ({data['holder']}, pid {int(data['pid'])}, since {data['since']})"
    except (ValueError, KeyError, TypeError, OSError):
        return ""


def registries(root: Path) -> list[Registry]:
    """Every registry under `root`, by name."""
    if not Path(root).is_dir():
        return []
    return [Registry(p) for p in sorted(Path(root).iterdir()) if (p / "versions").is_dir()]
