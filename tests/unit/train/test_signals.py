"""A second signal stops at once: no checkpoint is waited for, the half-written one vanishes, exit code 130.

The first signal's path (finish the step, checkpoint, exit 3, resume bit-identically) is tested in-process in
test_resume.py and against a real `tuneforge train` process in tests/integration/test_resume_cli.py.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from tests.unit.train.tiny_runs import checkpoint_steps, make_config
from tuneforge.artifacts import RunDir
from tuneforge.train import checkpoint, train
from tuneforge.train.run import StoppedAtOnce


def test_a_second_signal_stops_at_once_without_a_broken_checkpoint(
    tmp_path: Path, tiny_llama: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def impatient_user(step: int) -> None:
        # Both signals arrive while step 6's checkpoint is half-written (its weights are on disk).
        if step == 6:
            os.kill(os.getpid(), signal.SIGTERM)
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(checkpoint, "_pause_for_tests", impatient_user)
    cfg = make_config(tmp_path, tiny_llama)
    run = RunDir(Path(cfg.train.output_dir))
    with pytest.raises(StoppedAtOnce) as stopped:
        train(cfg)

    assert stopped.value.exit_code == 130
    assert str(stopped.value) == (
        "stopped at once by a second signal after step 6; the newest checkpoint is step-00000004\n"
        f"  fix: continue with: tuneforge train {run.config_path} --resume"
    )
    assert checkpoint_steps(run) == [3, 4]  # the half-written step 6 is gone, the complete ones untouched
    assert not [p.name for p in run.checkpoints.iterdir() if p.name.startswith(".")]
    assert run.manifest["status"] == "interrupted"
    assert run.manifest["error"] == str(stopped.value)
