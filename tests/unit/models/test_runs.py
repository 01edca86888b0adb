"""A run's model is loaded through one place: the finished-run check and the torch-free config reader."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tuneforge.artifacts import RunDir
from tuneforge.errors import TuneforgeError
from tuneforge.models.runs import check_finished, run_config


def _run(path: Path, status: str, final: bool = True) -> RunDir:
    if final:
        (path / "final").mkdir(parents=True)
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.yaml").write_text("model:\n  name: builtin:smollm2-135m\nmethod:\n  name: lora\n")
    (path / "manifest.json").write_text(json.dumps({"kind": "tuneforge.run", "status": status}))
    return RunDir.open(path)


def test_an_unfinished_run_is_refused_with_how_to_finish_it(tmp_path: Path) -> None:
    for status, final in (("running", True), ("completed", False)):
        run = _run(tmp_path / f"{status}-{final}", status, final)
        with pytest.raises(TuneforgeError) as err:
            check_finished(run)
        assert err.value.what == f"run {run.path} has not finished training (status: {status})"
        assert err.value.fix == f"finish it with: tuneforge train {run.config_path} --resume"
    check_finished(_run(tmp_path / "done", "completed"))


def test_the_run_config_is_read_without_importing_torch(tmp_path: Path) -> None:
    run = _run(tmp_path / "r", "completed")
    assert (run_config(run).model.name, run_config(run).method.name) == ("builtin:smollm2-135m", "lora")
    code = "import sys, tuneforge.models.runs, tuneforge.serve.engine; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
