"""A run never deletes what it did not make, never calls a broken run good, and its manifest is true."""

from __future__ import annotations

import errno
import json
import math
import os
import sys
import types
from pathlib import Path
from typing import Any

import pytest

from tests.unit.train.tiny_runs import checkpoint_steps, interrupted_at, make_config
from tuneforge.artifacts import DatasetDir, RunDir, RunLock
from tuneforge.data import prepare_dataset
from tuneforge.errors import TuneforgeError
from tuneforge.train import setup, train
from tuneforge.train.tracking import Trackers

SHORT = {"train.max_steps": 4, "train.eval_every": 0, "train.save_every": 2}


def _fail_after_open(monkeypatch: pytest.MonkeyPatch) -> None:
    """An internal error right after the run directory opened (the worst moment for a stale status)."""

    def broken(*_: Any, **__: Any) -> Any:
        raise RuntimeError("boom")

    monkeypatch.setattr(setup, "distribute", broken)


def test_overwrite_refuses_a_folder_that_merely_holds_a_config_yaml(tmp_path: Path, tiny_llama: Path) -> None:
    cfg = make_config(tmp_path, tiny_llama)
    mine = Path(cfg.train.output_dir)
    mine.mkdir()
    (mine / "config.yaml").write_text("my own notes\n")
    (mine / "thesis.tex").write_text("years of work\n")
    with pytest.raises(TuneforgeError) as refused:
        train(cfg, overwrite=True)
    assert str(refused.value) == (
        f"train.output_dir: {mine} is not a tuneforge run directory (its manifest.json does not say kind "
        "tuneforge.run); refusing to delete it\n"
        "  fix: choose another train.output_dir, or remove the folder yourself"
    )
    assert sorted(p.name for p in mine.iterdir()) == ["config.yaml", "thesis.tex"]


def test_a_run_that_fails_at_any_point_is_marked_failed_and_can_be_overwritten(
    tmp_path: Path, tiny_llama: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = make_config(tmp_path, tiny_llama, SHORT)
    _fail_after_open(monkeypatch)
    with pytest.raises(RuntimeError, match="boom"):
        train(cfg)
    run = RunDir(Path(cfg.train.output_dir))
    assert run.manifest["kind"] == RunDir.KIND  # written when the folder was made
    assert run.manifest["status"] == "failed" and run.manifest["error"] == "boom"
    (run.path / "leftover.txt").write_text("x")

    monkeypatch.undo()
    train(cfg, overwrite=True)
    assert run.manifest["status"] == "completed" and run.manifest.get("error") is None
    assert not (run.path / "leftover.txt").exists()


@pytest.mark.parametrize(
    ("key", "value"),
    [("train.learning_rate", math.inf), ("train.max_grad_norm", math.nan), ("method.alpha", math.inf)],
)
def test_nan_and_inf_anywhere_numeric_fail_validation(
    tmp_path: Path, tiny_llama: Path, key: str, value: float
) -> None:
    from tuneforge.models import resolve_method

    with pytest.raises(TuneforgeError, match="finite") as err:
        cfg = make_config(tmp_path, tiny_llama, {key: value})
        resolve_method(cfg.method)
    assert key in str(err.value)


BROKE_AT_2 = (
    "config key train.learning_rate: the update of step 2 made the weights NaN/inf although its loss and "
    "gradient were finite (a step far too large); nothing of it is saved; the newest checkpoint is "
    "step-00000001\n"
    "  fix: lower train.learning_rate (or set train.max_grad_norm) and start again, or resume from the "
    "last good checkpoint with --resume --force"
)


def _assert_failed_at_2_with_only_step_1_saved(cfg: Any) -> None:
    run = RunDir(Path(cfg.train.output_dir))
    assert run.manifest["status"] == "failed"
    assert run.manifest["error"] == BROKE_AT_2
    assert checkpoint_steps(run) == [1]
    assert not run.final.exists()
    rows = [r for r in run.metrics() if "split" not in r]
    assert [r["step"] for r in rows] == [1, 2]
    assert math.isfinite(rows[1]["loss"]) and math.isfinite(rows[1]["grad_norm"])


def test_an_update_that_breaks_the_weights_fails_the_run_and_saves_nothing_of_it(
    tmp_path: Path, tiny_llama: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The optimizer's second update leaves a NaN in a LoRA weight although loss and gradient were finite."""
    import torch

    real_step, calls = torch.optim.AdamW.step, {"n": 0}

    def step(self: torch.optim.AdamW, *args: Any, **kwargs: Any) -> Any:
        out = real_step(self, *args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 2:
            with torch.no_grad():
                self.param_groups[0]["params"][0].view(-1)[0] = math.nan
        return out

    monkeypatch.setattr(torch.optim.AdamW, "step", step)
    cfg = make_config(tmp_path, tiny_llama, {**SHORT, "train.save_every": 1})
    with pytest.raises(TuneforgeError) as stopped:
        train(cfg)
    assert str(stopped.value) == BROKE_AT_2
    _assert_failed_at_2_with_only_step_1_saved(cfg)


def test_a_learning_rate_past_float32_is_the_same_clear_failure(tmp_path: Path, tiny_llama: Path) -> None:
    # Step 1 runs at a warmup learning rate of 0; step 2's 1e300 cannot even be applied in float32.
    overrides = {**SHORT, "train.learning_rate": 1e300, "train.save_every": 1, "train.warmup_steps": 1}
    cfg = make_config(tmp_path, tiny_llama, overrides)
    with pytest.raises(TuneforgeError) as stopped:
        train(cfg)
    assert str(stopped.value) == BROKE_AT_2
    _assert_failed_at_2_with_only_step_1_saved(cfg)


def test_checkpoints_refuse_non_finite_weights(tmp_path: Path) -> None:
    import torch

    from tuneforge.train.checkpoint import check_finite

    check_finite([torch.ones(3)], what="x")
    with pytest.raises(TuneforgeError, match="refusing to save the final weights: they hold NaN/inf"):
        check_finite([torch.ones(3), torch.tensor([1.0, math.inf])], what="the final weights")


def _reprepare_with_another_split(cfg: Any) -> None:
    """The same source prepared again at the same path, split with another seed (prepare replaces it)."""
    data = cfg.data.model_copy(update={"seed": 1234})
    prepare_dataset(data, model=cfg.model, force=True)


def _move_a_row_from_train_to_test(dataset: DatasetDir) -> None:
    """What a re-split writes: other files, a manifest that matches them, the same input fingerprint."""
    train_rows = dataset.split_path("train").read_text().splitlines(keepends=True)
    test_path = dataset.split_path("test")
    dataset.split_path("train").write_text("".join(train_rows[1:]))
    test_path.write_text(test_path.read_text() + train_rows[0])
    manifest = dataset.manifest
    manifest["files"].update(dataset.split_hashes())
    (dataset.path / "manifest.json").write_text(json.dumps(manifest))


def test_resume_refuses_a_dataset_split_again_at_the_same_path(
    tmp_path: Path, tiny_llama: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = make_config(tmp_path, tiny_llama, SHORT)
    dataset = prepare_dataset(first.data, model=first.model)
    cfg = make_config(tmp_path, tiny_llama, {**SHORT, "data.path": str(dataset.path)})  # trains on the folder
    run = interrupted_at(cfg, monkeypatch, 2)
    recorded = run.manifest["dataset"]["files"]
    assert recorded == dataset.split_hashes()
    _move_a_row_from_train_to_test(dataset)
    now = dataset.split_hashes()

    with pytest.raises(TuneforgeError) as refused:
        train(cfg, resume=True)
    assert str(refused.value) == (
        f"{run.config_path}: the config or data differ from what this run started with, so resuming would "
        "not continue the same training:\n"
        + "".join(
            f"  dataset file {name} (sha256): {recorded[name][:12]!r} -> {now[name][:12]!r}\n"
            for name in ("test.jsonl", "train.jsonl")
        )
        + "  fix: resume with the original config and data, or pass --force to continue with the new ones"
    )
    assert run.manifest["status"] == "interrupted"


def test_a_split_file_edited_after_prepare_is_refused(tmp_path: Path, tiny_llama: Path) -> None:
    cfg = make_config(tmp_path, tiny_llama, SHORT)
    ds = prepare_dataset(cfg.data, model=cfg.model)
    path = ds.split_path("validation")
    path.write_text(path.read_text() + json.dumps({"text": "an extra row", "label": "pos"}) + "\n")
    with pytest.raises(
        TuneforgeError, match=r"split files of the dataset were changed .*\n  validation.jsonl: "
    ):
        train(cfg)
    assert not Path(cfg.train.output_dir).exists()


def test_evaluate_refuses_changed_splits_and_unknown_split_names(tmp_path: Path, tiny_llama: Path) -> None:
    from tuneforge.evaluation import evaluate_run

    cfg = make_config(tmp_path, tiny_llama, SHORT)
    run = train(cfg)
    with pytest.raises(TuneforgeError, match=r"--split: unknown split '\.\./\.\./x'"):
        evaluate_run(run.path, split="../../x")
    _reprepare_with_another_split(cfg)
    with pytest.raises(TuneforgeError) as refused:
        evaluate_run(run.path, split="test")
    assert "the dataset's split files changed since run" in str(refused.value)
    assert "\n  test.jsonl: " in str(refused.value) and "\n  train.jsonl: " in str(refused.value)
    assert not run.eval_dir.exists()


def test_a_resumed_run_clears_the_error_of_its_earlier_stop(
    tmp_path: Path, tiny_llama: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = make_config(tmp_path, tiny_llama, SHORT)
    run = interrupted_at(cfg, monkeypatch, 2)
    assert run.manifest["status"] == "interrupted" and "stopped by SIGTERM" in run.manifest["error"]

    # While another process holds the run, neither a resume nor an overwrite may touch it.
    held = RunLock.take(run.lock_path)
    try:
        for kwargs in ({"resume": True}, {"overwrite": True}):
            with pytest.raises(TuneforgeError) as busy:
                train(cfg, **kwargs)
            assert str(busy.value) == (
                f"train.output_dir: run directory {run.path} is in use by another tuneforge process "
                f"(PID {os.getpid()})\n"
                "  fix: wait for it to finish (or stop it), or choose another train.output_dir"
            )
    finally:
        held.release()
    assert run.manifest["status"] == "interrupted"

    train(cfg, resume=True)
    assert run.manifest["status"] == "completed"
    assert run.manifest.get("error") is None


def test_a_second_train_process_is_refused_while_the_first_runs(tmp_path: Path, tiny_llama: Path) -> None:
    """A real second process: the lock is the kernel's, so it holds across processes and names the PID."""
    import subprocess

    cfg = make_config(tmp_path, tiny_llama, SHORT)
    run_path = Path(cfg.train.output_dir)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from pathlib import Path; from tuneforge.artifacts import RunLock; "
            f"lock = RunLock.take(Path({str(run_path / 'train.lock')!r})); print('held', flush=True); "
            "sys.stdin.read()",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        with pytest.raises(
            TuneforgeError, match=rf"is in use by another tuneforge process \(PID {holder.pid}\)"
        ):
            train(cfg)
    finally:
        holder.communicate("", timeout=30)
    assert sorted(p.name for p in run_path.iterdir()) == ["train.lock"]  # nothing written beside the lock


def test_a_tracker_that_fails_to_start_is_one_clear_error_and_the_run_is_failed(
    tmp_path: Path, tiny_llama: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch.utils.tensorboard

    def refuse(*_: Any, **__: Any) -> Any:
        raise PermissionError(13, "Permission denied", "/some/where/events")

    monkeypatch.setattr(torch.utils.tensorboard, "SummaryWriter", refuse)
    cfg = make_config(tmp_path, tiny_llama, {**SHORT, "train.log_to": ["tensorboard"]})
    with pytest.raises(TuneforgeError) as err:
        train(cfg)
    assert str(err.value).startswith(
        "train.log_to: the tensorboard logger could not start: [Errno 13] Permission denied: "
        "'/some/where/events'"
    )
    assert RunDir(Path(cfg.train.output_dir)).manifest["status"] == "failed"


def test_an_mlflow_store_that_refuses_is_caught_before_the_run_directory_exists(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tuneforge.train.tracking import check_sinks

    fake = types.ModuleType("mlflow")
    fake.set_tracking_uri = lambda uri: None  # type: ignore[attr-defined]

    def set_experiment(name: str) -> None:
        raise RuntimeError("the file store is not supported any more\nlong details")

    fake.set_experiment = set_experiment  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "mlflow", fake)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "file:///tmp/mlruns")
    with pytest.raises(TuneforgeError) as err:
        check_sinks(["mlflow"], run_dir=tmp_path / "run")
    assert str(err.value).splitlines()[0] == (
        "train.log_to: the mlflow logger could not start (tracking URI file:///tmp/mlruns): the file store "
        "is not supported any more"
    )
    assert not (tmp_path / "run").exists()


def test_disk_full_while_checkpointing_is_one_line_and_keeps_the_last_good_checkpoint(
    tmp_path: Path, tiny_llama: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tuneforge.train import checkpoint

    real_save = checkpoint.save_file
    cfg = make_config(tmp_path, tiny_llama, {**SHORT, "train.save_every": 1, "train.keep_checkpoints": 1})

    def save_file(tensors: Any, path: str) -> None:
        if "step-00000003" in path:
            raise OSError(errno.ENOSPC, "No space left on device", path)
        real_save(tensors, path)

    monkeypatch.setattr(checkpoint, "save_file", save_file)
    with pytest.raises(TuneforgeError) as full:
        train(cfg)
    run = RunDir(Path(cfg.train.output_dir))
    message = str(full.value)
    assert message.startswith("train.output_dir: no space left on the device while writing ")
    assert message.splitlines()[0].endswith(
        "weights.safetensors after step 3; the newest checkpoint is step-00000002"
    )
    assert "fix: free disk space (or lower train.keep_checkpoints), then continue with: " in message
    assert run.manifest["status"] == "failed"
    assert checkpoint_steps(run) == [2]  # complete, untouched; the half-written step 3 is gone
    assert not [p for p in run.checkpoints.iterdir() if p.name.startswith(".")]


def test_metrics_jsonl_is_strict_json_and_readers_get_the_nan_back(tmp_path: Path) -> None:
    trackers = Trackers(tmp_path, [], config={})
    trackers.log({"step": 1, "loss": math.nan, "grad_norm": math.inf, "lr": 0.1})
    trackers.log({"step": 2, "loss": 0.5, "grad_norm": -math.inf, "lr": 0.1})
    trackers.close()

    def no_constants(name: str) -> None:
        raise AssertionError(f"bare {name} in metrics.jsonl")

    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    raw = [json.loads(line, parse_constant=no_constants) for line in lines]
    assert raw[0] == {
        "step": 1,
        "loss": None,
        "loss_nonfinite": "nan",
        "grad_norm": None,
        "grad_norm_nonfinite": "inf",
        "lr": 0.1,
    }
    assert raw[1]["grad_norm"] is None and raw[1]["grad_norm_nonfinite"] == "-inf"
    back = RunDir(tmp_path).metrics()
    assert (
        math.isnan(back[0]["loss"]) and back[0]["grad_norm"] == math.inf and back[1]["grad_norm"] == -math.inf
    )
    assert back[1]["loss"] == 0.5 and set(back[0]) == {"step", "loss", "grad_norm", "lr"}


def test_disk_full_while_writing_final_fails_the_run_and_leaves_no_final(
    tmp_path: Path, tiny_llama: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import peft

    def save_pretrained(self: Any, folder: str, **_: Any) -> None:
        (Path(folder) / "adapter_model.safetensors").write_bytes(b"half")
        raise OSError(
            errno.ENOSPC, "No space left on device", str(Path(folder) / "adapter_model.safetensors")
        )

    monkeypatch.setattr(peft.PeftModel, "save_pretrained", save_pretrained)
    cfg = make_config(tmp_path, tiny_llama, SHORT)
    with pytest.raises(TuneforgeError) as full:
        train(cfg)
    run = RunDir(Path(cfg.train.output_dir))
    assert (
        str(full.value)
        .splitlines()[0]
        .endswith("adapter_model.safetensors after step 4; checkpoint step-00000004 holds step 4")
    )
    assert run.manifest["status"] == "failed"
    assert not run.final.exists() and not [p for p in run.path.iterdir() if p.name.startswith(".final")]
    assert checkpoint_steps(run) == [2, 4]
