"""`tuneforge serve registry:NAME`: serve a registry's champion and follow its promotions and rollbacks.

A thread reads the champion pointer (a few hundred bytes) every `serve.registry_poll_s`. When it names another
version, that version's model is loaded beside the current one, then `AppState.switch` sends new requests to
it; requests in flight finish on the old engine, which is closed once the last of them has ended. A pointer
that is missing or corrupt, or names a version that cannot be loaded, changes nothing: the current version
goes on serving, the server's log and /ready say why, and the next change of the pointer is tried again. Only
a version whose folder was published whole (registry.py: one rename) and whose run finished is loaded.
"""

from __future__ import annotations

import os
import threading
import traceback
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from tuneforge.config import ServeConfig
from tuneforge.errors import TuneforgeError
from tuneforge.registry import Registry
from tuneforge.serve.engine import Engine, ServedModel, resolve_targets
from tuneforge.serve.state import AppState, say

PREFIX = "registry:"


def registry_target(targets: list[str]) -> str | None:
    """The NAME of a `registry:NAME` target (None when the targets are runs or models)."""
    names = [t.removeprefix(PREFIX) for t in targets if t.startswith(PREFIX)]
    if not names:
        return None
    if len(targets) > 1:
        raise TuneforgeError(
            f"{PREFIX}{names[0]} is served alone, not beside other models",
            where="tuneforge serve",
            fix="start one server for the registry and another for the other runs",
        )
    return names[0]


def open_registry(name: str, cfg: ServeConfig) -> Registry:
    root = Path(cfg.registry_root or os.environ.get("TUNEFORGE_REGISTRY") or "registry").expanduser()
    reg = Registry.at(root, name)
    if not reg.exists():
        raise TuneforgeError(
            f"there is no registry {name!r} in {root.resolve()}",
            where="serve.registry_root",
            fix="point serve.registry_root (or $TUNEFORGE_REGISTRY) at the folder `tuneforge registry` "
            f"writes, or register a run first: tuneforge registry register {name} RUN",
        )
    return reg


def champion_models(reg: Registry) -> tuple[int, list[ServedModel]]:
    """The champion's version and its model under the registry's name (checked; nothing is loaded)."""
    pointer = reg.champion()  # a corrupt pointer: TuneforgeError saying how to repair it
    if pointer is None:
        raise TuneforgeError(
            f"registry {reg.name!r} has no champion",
            where=str(reg.pointer),
            fix=f"promote a version first: tuneforge registry promote {reg.name} N --reason WHY",
        )
    return int(pointer["version"]), version_models(reg, int(pointer["version"]))


def version_models(reg: Registry, version: int) -> list[ServedModel]:
    """A registered version's run, served under the registry's name whichever run answers."""
    record = reg.version(version)
    served = resolve_targets([str(reg.run_path(record))])  # refuses a run that is gone or never finished
    return [replace(s, name=reg.name) for s in served]


def only_registry_name(engine: Engine, name: str) -> Engine:
    """Clients call the registry's name only (an engine also offers the base of an adapter run)."""
    engine.models = {name: engine.models[name]}
    return engine


def _pointer_bytes(path: Path) -> bytes | None:
    """The pointer as it is on disk: equal bytes, same champion (a stat could miss a change made within one
    timestamp tick to a reused inode)."""
    try:
        return path.read_bytes()
    except OSError:
        return None


class ChampionWatcher:
    """Follows the champion pointer of `reg`, loading each new champion with `build` and switching to it."""

    def __init__(
        self,
        state: AppState,
        reg: Registry,
        build: Callable[[list[ServedModel]], Engine],
        poll_s: float,
    ) -> None:
        self.state, self.reg, self.build, self.poll_s = state, reg, build, poll_s
        # Never a signature: the first look reads the pointer, so a promotion made while the server was
        # loading its first version is not missed.
        self.seen: bytes | str | None = "unread"
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name="champion-watcher", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(timeout=1)  # a version still loading is abandoned with the process

    def _run(self) -> None:
        while not self.stopping.wait(self.poll_s):
            try:
                self.check()
            except Exception:  # a bug of ours must not stop the watching; the traceback goes to the log
                traceback.print_exc()

    def check(self) -> None:
        """One look at the pointer: switch to a new champion, or say why the current one stays."""
        sig = _pointer_bytes(self.reg.pointer)
        if sig == self.seen:
            return
        self.seen = sig
        current = self.state.version
        try:
            if sig is None:
                raise TuneforgeError(f"the champion pointer {self.reg.pointer} is missing")
            version, served = champion_models(self.reg)
            if version == current:
                self._problem(None)
                return
            say(f"registry {self.reg.name}: version {version} is the champion now; loading it")
            engine = only_registry_name(self.build(served), self.reg.name)
        except TuneforgeError as err:
            self._problem(err.what)
            return
        except Exception as err:  # weights that do not load: the current version goes on serving
            traceback.print_exc()
            self._problem(f"the new champion could not be loaded ({type(err).__name__}: {err})")
            return
        self.state.switch(engine, version)
        self._problem(None)
        say(
            f"registry {self.reg.name}: serving version {version}; "
            f"requests in flight on version {current} finish there"
        )

    def _problem(self, problem: str | None) -> None:
        if problem is not None:
            problem = f"{problem}; version {self.state.version} goes on serving"
            if problem != self.state.registry_problem:
                say(f"registry {self.reg.name}: {problem}")
        elif self.state.registry_problem is not None:
            say(f"registry {self.reg.name}: the champion pointer can be followed again")
        self.state.registry_problem = problem
