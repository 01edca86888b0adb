"""The monitor: section changes nothing a training computes, so it never blocks a --resume."""

from __future__ import annotations

from pathlib import Path

import yaml

from tuneforge.artifacts import RunDir
from tuneforge.config import RunConfig
from tuneforge.train.resume import resume_diff


def test_a_run_recorded_before_the_monitor_section_existed_resumes_without_force(tmp_path: Path) -> None:
    old = RunConfig().to_dict()
    del old["monitor"]
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(old), encoding="utf-8")
    cfg = RunConfig.model_validate({"monitor": {"alpha": 0.01, "alerts": {"error_rate": 0.02}}})
    assert resume_diff(RunDir(tmp_path), cfg, None) == []
    changed = RunConfig.model_validate({"train": {"seed": 7}})
    assert [d[0] for d in resume_diff(RunDir(tmp_path), changed, None)] == ["train.seed"]
