"""The registry directory: numbered versions, a champion pointer switched atomically, a history."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.conftest import run_cli
from tuneforge.errors import TuneforgeError
from tuneforge.registry import Registry, registries


def finished_run(path: Path, accuracy: float, status: str = "completed") -> Path:
    (path / "final").mkdir(parents=True)
    (path / "eval").mkdir()
    (path / "config.yaml").write_text("{}\n")
    manifest = {
        "kind": "tuneforge.run",
        "status": status,
        "task": "classification",
        "base_model": "builtin:minilm-l6",
        "dataset": {"fingerprint": f"data-{path.name}"},
        "config_fingerprint": "cfg",
    }
    (path / "manifest.json").write_text(json.dumps(manifest))
    result = {"split": "test", "tuned": {"accuracy": accuracy, "macro_f1": accuracy - 0.1, "n": 50}}
    (path / "eval" / "test.json").write_text(json.dumps(result))
    return path


def test_register_promote_and_roll_back_keep_a_history(tmp_path: Path) -> None:
    reg = Registry.at(tmp_path / "registry", "sentiment")
    v1 = reg.register(finished_run(tmp_path / "run1", 0.8), "first")
    v2 = reg.register(finished_run(tmp_path / "run2", 0.9))
    assert (v1["version"], v2["version"]) == (1, 2)
    assert v2["eval"] == {"test": {"accuracy": 0.9, "macro_f1": 0.8, "n": 50.0}}
    assert v2["run"] == str((tmp_path / "run2").resolve()) and v2["data_fingerprint"] == "data-run2"
    assert reg.champion() is None  # registered is not promoted
    reg.promote(1, "baseline")
    reg.promote(2, "accuracy 0.9 vs 0.8")
    assert reg.champion()["version"] == 2  # type: ignore[index]
    assert reg.rollback("complaints")["version"] == 1
    pointer = json.loads((reg.path / "champion.json").read_text())
    assert (pointer["version"], pointer["stack"], pointer["reason"]) == (1, [1], "complaints")
    assert [(h["action"], h["version"], h["reason"]) for h in reg.history()] == [
        ("register", 1, "first"),
        ("register", 2, ""),
        ("promote", 1, "baseline"),
        ("promote", 2, "accuracy 0.9 vs 0.8"),
        ("rollback", 1, "complaints"),
    ]
    assert sorted(p.name for p in (reg.path / "versions" / "2").iterdir()) == [".tuneforge", "version.json"]
    assert [r.name for r in registries(tmp_path / "registry")] == ["sentiment"]


def test_refusals_name_what_is_wrong(tmp_path: Path) -> None:
    reg = Registry.at(tmp_path, "m")
    with pytest.raises(TuneforgeError, match=r"has not finished training \(status: running\)"):
        reg.register(finished_run(tmp_path / "r0", 0.5, status="running"))
    with pytest.raises(TuneforgeError, match="there is no registry 'm'"):
        reg.promote(1, "x")
    reg.register(finished_run(tmp_path / "r1", 0.5))
    with pytest.raises(TuneforgeError, match=r"registry 'm' has no version 7 \(versions: 1\)"):
        reg.promote(7, "x")
    reg.promote(1, "first")
    with pytest.raises(TuneforgeError, match="has no earlier champion to roll back to"):
        reg.rollback("x")
    with pytest.raises(TuneforgeError, match="is not a registry name"):
        Registry.at(tmp_path, "../escape")


def test_a_second_change_at_once_is_refused_and_a_corrupt_pointer_says_how_to_repair(tmp_path: Path) -> None:
    reg = Registry.at(tmp_path, "m")
    reg.register(finished_run(tmp_path / "r1", 0.5))
    reg.promote(1, "first")
    with reg.locked(), pytest.raises(TuneforgeError, match="is being changed by another tuneforge process"):
        reg.register(finished_run(tmp_path / "r2", 0.6))
    assert [v["version"] for v in reg.versions()] == [1]  # nothing half-registered
    reg.pointer.write_text('{"version": 9, "sta')
    with pytest.raises(TuneforgeError) as err:
        reg.champion()
    assert "the champion pointer of registry 'm' is corrupt" in err.value.render()
    assert err.value.render().endswith("set the champion again: tuneforge registry promote m 1")
    # ... and doing what it says repairs it, the champion stack rebuilt from the history for a later rollback
    reg.register(finished_run(tmp_path / "r3", 0.6))
    reg.promote(2, "second")
    reg.pointer.write_text("not json")
    assert reg.promote(2, "repair")["stack"] == [1, 2]
    assert reg.champion()["version"] == 2 and reg.history()[-1]["repaired_pointer"] is True
    assert reg.rollback("back")["version"] == 1


def test_the_registry_commands(tmp_path: Path) -> None:
    finished_run(tmp_path / "run1", 0.8)
    finished_run(tmp_path / "run2", 0.9)
    for args in (["register", "support", "run1"], ["register", "support", "run2"]):
        assert run_cli("registry", *args, cwd=tmp_path).returncode == 0
    r = run_cli("registry", "promote", "support", "2", "--reason", "better", cwd=tmp_path)
    assert r.stdout.strip() == "support: champion is now version 2"
    r = run_cli("registry", "rollback", "support", "--reason", "x", cwd=tmp_path)
    assert r.returncode == 2 and "has no earlier champion to roll back to" in r.stderr
    r = run_cli("registry", "show", "support", cwd=tmp_path)
    assert "support: champion 2" in r.stdout and "accuracy 0.9" in r.stdout
    assert r.stdout.rstrip().splitlines()[-1].endswith("promote 2  better")


def test_a_promotion_killed_before_the_pointer_moves_leaves_the_old_champion(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tuneforge.registry as registry

    reg = Registry.at(tmp_path, "m")
    reg.register(finished_run(tmp_path / "r1", 0.5))
    reg.register(finished_run(tmp_path / "r2", 0.6))
    reg.promote(1, "first")

    def killed(path: Path, obj: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(registry, "write_json_atomic", killed)
    with pytest.raises(KeyboardInterrupt):
        reg.promote(2, "second")
    assert reg.champion()["version"] == 1  # type: ignore[index]
    assert [h["action"] for h in reg.history()] == ["register", "register", "promote", "promote"]


def test_an_mlflow_mirror_that_cannot_be_used_refuses_before_the_folder_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Runs without mlflow: the checks come before the import (the mirror itself: test_registry_mlflow.py)."""
    import socket
    import sys

    reg = Registry.at(tmp_path / "registry", "m")
    reg.register(finished_run(tmp_path / "r1", 0.7), "before the mirror was turned on")
    with pytest.raises(TuneforgeError, match="no MLflow registry is configured to mirror to"):
        reg.sync_mirror()
    assert reg.sync_mirror(required=False) is None
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("TUNEFORGE_REGISTRY_MLFLOW", f"http://127.0.0.1:{port}")
    with pytest.raises(TuneforgeError, match="cannot reach the MLflow registry server") as err:
        reg.promote(1, "go")
    assert err.value.where == f"$TUNEFORGE_REGISTRY_MLFLOW=http://127.0.0.1:{port}"
    assert err.value.fix is not None and err.value.fix.startswith("the registry folder was not changed")
    with pytest.raises(TuneforgeError, match="cannot reach"):
        reg.register(finished_run(tmp_path / "r2", 0.8))
    monkeypatch.setenv("TUNEFORGE_REGISTRY_MLFLOW", f"sqlite:///{tmp_path}/mlflow.db")
    monkeypatch.setitem(sys.modules, "mlflow", None)  # as if not installed: the import raises ImportError
    with pytest.raises(TuneforgeError, match="TUNEFORGE_REGISTRY_MLFLOW is set, but mlflow is not installed"):
        reg.promote(1, "go")
    assert reg.champion() is None and [v["version"] for v in reg.versions()] == [1]
    assert [h["action"] for h in reg.history()] == ["register"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r1", "r2", "registry"]  # no stray mlflow.db


def test_a_workspace_moved_whole_keeps_its_registry_runs(tmp_path: Path) -> None:
    before = tmp_path / "before"
    reg = Registry.at(before / "registry", "m")
    reg.register(finished_run(before / "runs" / "r1", 0.5))
    reg.promote(1, "first")
    after = before.rename(tmp_path / "after")
    moved = Registry.at(after / "registry", "m")
    record = moved.version(1)
    assert record["run_relative"] == "../../runs/r1" and not Path(record["run"]).exists()
    assert moved.run_path(record) == after / "runs" / "r1"
    shown = run_cli("registry", "show", "m", "--root", "registry", cwd=after)
    assert shown.returncode == 0 and str(after / "runs" / "r1") in shown.stdout.replace("\n", "")
    # A run that is neither where it was nor where it would be: the recorded path, for the error to name.
    shutil.rmtree(after / "runs")
    assert moved.run_path(record) == Path(record["run"])
