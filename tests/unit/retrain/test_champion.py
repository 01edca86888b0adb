"""A retrain refuses, with one clear message each, a registry it cannot start from; the retrain: section."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.unit.test_registry import finished_run
from tuneforge.config import config_from_dict
from tuneforge.errors import TuneforgeError
from tuneforge.registry import Registry
from tuneforge.retrain import retrain


def refusal(reg: Registry) -> str:
    with pytest.raises(TuneforgeError) as err:
        retrain(reg, config_from_dict({}))
    return err.value.render()


def test_a_registry_it_cannot_start_from_is_one_clear_error(tmp_path: Path) -> None:
    reg = Registry.at(tmp_path / "registry", "m")
    assert refusal(reg).startswith(
        f"there is no registry 'm' in {tmp_path / 'registry'} (registries there: none)\n"
    )
    assert not reg.path.exists()  # refused before the lock would create the folder
    reg.versions_dir.mkdir(parents=True)
    assert refusal(reg).startswith(
        f"{reg.path}: registry 'm' has no versions: there is no champion to retrain\n"
        "  fix: register and promote a run first: tuneforge registry register m RUN"
    )
    reg.register(finished_run(tmp_path / "r1", 0.5))
    assert refusal(reg) == (
        f"{reg.pointer}: registry 'm' has no champion: no version was ever promoted\n"
        "  fix: promote the version to retrain from: tuneforge registry promote m N --reason ..."
    )
    reg.promote(1, "first")
    # The run was never trained on a dataset this machine has: the message evaluate and monitor give too.
    r1 = (tmp_path / "r1").resolve()
    assert refusal(reg) == (
        f"{r1 / 'manifest.json'} (dataset.path): run {r1} records no dataset folder in its manifest.json\n"
        "  fix: train the run again"
    )
    shutil.rmtree(tmp_path / "r1")
    assert refusal(reg).startswith(
        f"the champion's run {(tmp_path / 'r1').resolve()} (version 1 of 'm') is missing\n"
    )
    reg.pointer.write_text('{"version": 1, "sta')
    assert "the champion pointer of registry 'm' is corrupt" in refusal(reg)
    assert [h["action"] for h in reg.history()] == ["register", "promote"]  # nothing recorded


def test_the_retrain_section() -> None:
    r = config_from_dict({}).retrain
    assert (r.metric, r.min_gain, r.alpha, r.data) == (None, 0.0, 0.05, [])
    with pytest.raises(TuneforgeError, match=r"unknown key 'retrain.min_gian'"):
        config_from_dict({"retrain": {"min_gian": 0.1}})
    with pytest.raises(TuneforgeError, match=r"retrain.alpha: Input should be less than 1"):
        config_from_dict({"retrain": {"alpha": 1.5}})
    assert json.loads(json.dumps(config_from_dict({"retrain": {"data": ["fb.jsonl"]}}).to_dict()))["retrain"][
        "data"
    ] == ["fb.jsonl"]


def test_a_run_recorded_before_the_retrain_section_existed_resumes_without_force(tmp_path: Path) -> None:
    import yaml

    from tuneforge.artifacts import RunDir
    from tuneforge.config import RunConfig
    from tuneforge.train.resume import resume_diff

    old = RunConfig().to_dict()
    del old["retrain"]
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(old), encoding="utf-8")
    cfg = RunConfig.model_validate({"retrain": {"data": ["feedback.jsonl"], "min_gain": 0.01}})
    assert resume_diff(RunDir(tmp_path), cfg, None) == []
