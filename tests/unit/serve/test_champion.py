"""Following a registry's champion: leases keep a request on its engine, the watcher switches or says why not.

The real server is driven as a process in tests/integration/test_serve_registry.py; these are the cases that
need exact timing (an engine closed only after its last request) or a fault on demand (weights that fail).
"""

from __future__ import annotations

import gc
import json
import re
import time
from pathlib import Path
from typing import Any

import pytest

from tests.unit.serve.app_state import app_state
from tests.unit.test_registry import finished_run
from tuneforge.config import ServeConfig
from tuneforge.errors import TuneforgeError
from tuneforge.registry import Registry
from tuneforge.serve import champion
from tuneforge.serve.champion import ChampionWatcher, registry_target
from tuneforge.serve.engine import ServedModel
from tuneforge.serve.keys import KeyFile
from tuneforge.serve.limits import Admission
from tuneforge.serve.state import AppState


class FakeEngine:
    def __init__(self, tag: str) -> None:
        self.tag = tag
        self.models = {"m": ServedModel("m", "generate"), "base": ServedModel("base", "generate")}
        self.closed = False

    def queue_depth(self) -> int:
        return 0

    def close(self) -> None:
        self.closed = True


def _state(tmp_path: Path, engine: FakeEngine, version: int | None = 1) -> AppState:
    return app_state(
        engine, KeyFile(tmp_path / "keys.json"), admission=Admission(8, 8), registry="m", version=version
    )


def _closed(engine: FakeEngine) -> bool:
    """Whether the engine is closed once the closing thread has had time to run."""
    for _ in range(200):
        if engine.closed:
            return True
        time.sleep(0.01)
    return False


def test_a_switched_out_engine_closes_only_after_its_last_request(tmp_path: Path) -> None:
    old, new = FakeEngine("old"), FakeEngine("new")
    state = _state(tmp_path, old)
    first, second = state.lease(), state.lease()
    state.switch(new, 2)  # type: ignore[arg-type]
    third = state.lease()
    assert (first.engine, first.version, third.engine, third.version) == (old, 1, new, 2)
    assert state.in_flight() == {2: 1, 1: 2}
    first.release()
    first.release()  # once only: the second call changes nothing
    time.sleep(0.05)
    assert not old.closed and state.in_flight() == {2: 1, 1: 1}
    del second  # a lease nobody released (a stream that never started) is given back when it is garbage
    gc.collect()
    assert _closed(old) and not new.closed
    assert state.in_flight() == {2: 1}


def test_an_engine_without_requests_in_flight_closes_at_the_switch(tmp_path: Path) -> None:
    old, new = FakeEngine("old"), FakeEngine("new")
    state = _state(tmp_path, old)
    state.lease().release()
    state.switch(new, 2)  # type: ignore[arg-type]
    assert _closed(old) and state.engine is new and state.version == 2


def test_a_registry_is_served_alone() -> None:
    assert registry_target(["runs/a", "runs/b"]) is None
    assert registry_target(["registry:support"]) == "support"
    with pytest.raises(TuneforgeError, match="registry:support is served alone, not beside other models"):
        registry_target(["registry:support", "runs/a"])


@pytest.fixture
def watched(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """A registry of three versions, version 1 the champion and served; loading version 3 fails."""
    reg = Registry.at(tmp_path / "registry", "m")
    for n in (1, 2, 3):
        reg.register(finished_run(tmp_path / f"run{n}", 0.5))
    reg.promote(1, "first")
    monkeypatch.setattr(champion, "version_models", lambda r, n: [ServedModel("m", "generate", path=f"v{n}")])
    built: list[str] = []

    def build(served: list[ServedModel]) -> FakeEngine:
        if served[0].path == "v3":
            raise OSError("safetensors header is corrupt")
        built.append(served[0].path)
        return FakeEngine(served[0].path)

    state = _state(tmp_path, FakeEngine("v1"))
    watcher = ChampionWatcher(state, reg, build, poll_s=60)  # type: ignore[arg-type]
    watcher.check()  # the first look reads the pointer: the champion it started with, nothing to do
    return {"reg": reg, "state": state, "watcher": watcher, "built": built}


def test_a_promotion_switches_and_the_base_is_not_offered(watched: dict[str, Any]) -> None:
    reg, state, watcher = watched["reg"], watched["state"], watched["watcher"]
    assert watched["built"] == [] and state.version == 1
    reg.promote(2, "better")
    watcher.check()
    assert (state.version, state.engine.tag, list(state.engine.models)) == (2, "v2", ["m"])
    watcher.check()  # the pointer did not change again: nothing is loaded twice
    reg.rollback("complaints")
    watcher.check()
    assert (state.version, state.engine.tag, watched["built"]) == (1, "v1", ["v2", "v1"])
    assert state.registry_problem is None


def test_a_broken_pointer_or_version_keeps_the_current_one_and_says_why(
    watched: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    reg, state, watcher = watched["reg"], watched["state"], watched["watcher"]
    good = reg.pointer.read_text()
    cases = [
        ("{not json", "the champion pointer of registry 'm' is corrupt (Expecting property name"),
        (
            json.dumps({"version": 9, "stack": [1, 9]}),
            "the champion pointer of registry 'm' is corrupt (pointer names no registered version)",
        ),
        (None, f"the champion pointer {reg.pointer} is missing"),
    ]
    for text, problem in cases:
        if text is None:
            reg.pointer.unlink()
        else:
            reg.pointer.write_text(text)
        watcher.check()
        assert state.version == 1 and state.engine.tag == "v1"
        assert state.registry_problem is not None
        assert state.registry_problem.startswith(problem), state.registry_problem
        assert state.registry_problem.endswith("; version 1 goes on serving")
    reg.pointer.write_text(good)
    watcher.check()
    assert state.registry_problem is None
    reg.promote(3, "weights that do not load")
    watcher.check()
    assert (state.version, state.engine.tag) == (1, "v1")
    assert state.registry_problem == (
        "the new champion could not be loaded (OSError: safetensors header is corrupt); "
        "version 1 goes on serving"
    )
    err = capsys.readouterr().err
    assert "tuneforge serve: registry m: the champion pointer of registry 'm' is corrupt" in err
    assert "tuneforge serve: registry m: the champion pointer can be followed again" in err
    assert watched["built"] == []  # nothing half-registered was ever loaded


def test_the_shadow_is_a_version_of_the_served_registry_other_than_the_champion(
    watched: dict[str, Any],
) -> None:
    from tuneforge.serve.shadow import shadow_plan

    reg = watched["reg"]

    def plan(spec: str | None, served: Registry | None = reg, champion: int | None = 1) -> Any:
        return shadow_plan(ServeConfig(shadow=spec), served, champion)

    assert plan(None) is None
    assert plan("registry:m@challenger")[0] == 3  # the newest version above the champion
    assert plan("registry:m@2")[0] == 2
    refusals = {
        "registry:other@2": "serve.shadow: 'registry:other@2' must be registry:NAME@VERSION of the registry "
        "being served (registry:m)",
        "registry:m": "must be registry:NAME@VERSION of the registry being served",
        "registry:m@latest": "serve.shadow: 'registry:m@latest' names no version",
        "registry:m@1": "serve.shadow: 'registry:m@1' names version 1, the champion itself",
    }
    for spec, message in refusals.items():
        with pytest.raises(TuneforgeError, match=re.escape(message)):
            plan(spec)
    with pytest.raises(TuneforgeError, match=r"of the registry being served \(runs\)"):
        plan("registry:m@2", served=None, champion=None)
    with pytest.raises(TuneforgeError, match=r"no version is newer than the champion \(3\)"):
        plan("registry:m@challenger", champion=3)


def test_serving_a_registry_needs_one_with_a_champion(tmp_path: Path) -> None:
    from tuneforge.serve.champion import champion_models, open_registry

    cfg = ServeConfig(registry_root=str(tmp_path / "registry"))
    with pytest.raises(TuneforgeError, match=r"serve.registry_root: there is no registry 'm' in .*registry"):
        open_registry("m", cfg)
    reg = Registry.at(tmp_path / "registry", "m")
    reg.register(finished_run(tmp_path / "run1", 0.5))
    with pytest.raises(TuneforgeError, match="registry 'm' has no champion") as err:
        champion_models(open_registry("m", cfg))
    assert err.value.fix == "promote a version first: tuneforge registry promote m N --reason WHY"
