"""The MLflow Model Registry mirror: versions, tags and the champion/challenger aliases follow the folder.

Skipped where mlflow is not installed (it is an optional extra, not in `make test`'s EXTRAS): to run it,
pip install 'tuneforge[mlflow]' (mlflow-skinny is enough: the registry client and its SQLite store).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.unit.test_registry import finished_run
from tuneforge.registry import Registry
from tuneforge.registry_mlflow import ENV

mlflow = pytest.importorskip("mlflow", reason="mlflow is an optional extra: pip install 'tuneforge[mlflow]'")


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One SQLite store for the module: creating its tables (MLflow's migrations) takes seconds."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri).search_registered_models()
    return uri


def mirrored(uri: str, name: str) -> tuple[dict[str, int], dict[int, dict[str, Any]]]:
    """The registered model's aliases (alias → tuneforge version) and its versions by tuneforge version."""
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    by_mlflow = {int(v.version): v for v in client.search_model_versions(f"name = '{name}'")}
    tf = {n: int(v.tags["tuneforge.version"]) for n, v in by_mlflow.items()}
    aliases = {a: tf[int(n)] for a, n in client.get_registered_model(name).aliases.items()}
    versions = {tf[n]: {"source": v.source, **v.tags} for n, v in by_mlflow.items()}
    return aliases, versions


def test_register_promote_and_rollback_move_the_mlflow_aliases(
    tmp_path: Path, store: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ENV, store)
    reg = Registry.at(tmp_path / "registry", "sentiment")
    reg.register(finished_run(tmp_path / "run1", 0.8), "first")
    reg.register(finished_run(tmp_path / "run2", 0.9))
    aliases, versions = mirrored(store, "sentiment")
    assert aliases == {"challenger": 2}  # nothing promoted: the newest version is the challenger
    assert versions[2] == {
        "source": str((tmp_path / "run2").resolve()),
        "tuneforge.version": "2",
        "tuneforge.run": str((tmp_path / "run2").resolve()),
        "tuneforge.task": "classification",
        "tuneforge.base_model": "builtin:minilm-l6",
        "tuneforge.data_fingerprint": "data-run2",
        "tuneforge.config_fingerprint": "cfg",
        "eval.test.accuracy": "0.9",
        "eval.test.macro_f1": "0.8",
        "eval.test.n": "50",
    }
    assert versions[1]["eval.test.accuracy"] == "0.8" and sorted(versions) == [1, 2]

    reg.promote(1, "baseline")
    assert mirrored(store, "sentiment")[0] == {"champion": 1, "challenger": 2}
    reg.promote(2, "better")
    assert mirrored(store, "sentiment")[0] == {"champion": 2}  # no version above the champion
    reg.rollback("complaints")
    assert mirrored(store, "sentiment")[0] == {"champion": 1, "challenger": 2}
    assert reg.champion()["version"] == 1  # type: ignore[index]
    assert sorted(mirrored(store, "sentiment")[1]) == [1, 2]  # each change synced, nothing created twice


def test_turning_the_mirror_on_later_catches_up_the_versions_registered_before(
    tmp_path: Path, store: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    reg = Registry.at(tmp_path / "registry", "late")
    reg.register(finished_run(tmp_path / "run1", 0.7), "before the mirror was turned on")
    reg.register(finished_run(tmp_path / "run2", 0.8))
    reg.promote(1, "first")
    monkeypatch.setenv(ENV, store)
    assert reg.sync_mirror() == {1: 1, 2: 2}  # a new registered model: MLflow numbers from 1 as well
    assert reg.sync_mirror() == {1: 1, 2: 2}  # a second sync finds them: nothing created twice
    aliases, versions = mirrored(store, "late")
    assert aliases == {"champion": 1, "challenger": 2}
    assert versions[1]["source"] == str((tmp_path / "run1").resolve()) and sorted(versions) == [1, 2]
