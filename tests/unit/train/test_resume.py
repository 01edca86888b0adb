"""Exact resume: a run stopped at step k and resumed ends bit-identical to an uninterrupted one (CPU)."""

from __future__ import annotations

import shutil
import signal
from pathlib import Path

import pytest

from tests.unit.train.tiny_runs import (
    assert_same_tensors,
    checkpoint_steps,
    final_weights,
    interrupted_at,
    make_config,
    read_state,
    records,
    stop_with_signal_at,
    uninterrupted,
)
from tuneforge.artifacts import RunDir
from tuneforge.errors import TuneforgeError
from tuneforge.train import EXIT_INTERRUPTED, train
from tuneforge.train.checkpoint import complete_checkpoints


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, tiny_llama: Path) -> RunDir:
    """The uninterrupted LoRA run (it saves only at the end: checkpoints must not change the result)."""
    return uninterrupted(tmp_path_factory.mktemp("reference"), tiny_llama)


@pytest.fixture(scope="module")
def reference_full(tmp_path_factory: pytest.TempPathFactory, tiny_llama: Path) -> RunDir:
    tmp = tmp_path_factory.mktemp("reference-full")
    return train(make_config(tmp, tiny_llama, FULL | {"train.save_every": 0}))


FULL = {"method": {"name": "full"}, "model.dropout": 0.1, "train.learning_rate": 1e-3}


def test_reference_run_is_what_the_resume_tests_assume(reference: RunDir) -> None:
    rows = records(reference)
    train_rows = [r for r in rows if "split" not in r]
    assert [r["step"] for r in train_rows] == list(range(1, 15))  # 7 steps per epoch, 2 epochs
    assert [r["epoch"] for r in train_rows][6:8] == [1.0, 1.1429]
    assert [r["step"] for r in rows if r.get("split") == "validation"] == [4, 8, 12, 14]
    assert not any(r["skipped"] for r in train_rows)
    assert reference.manifest["status"] == "completed"
    assert len(set(r["loss"] for r in train_rows)) == 14  # the losses move, so equality below means something


@pytest.mark.parametrize(("stop_at", "sig"), [(3, signal.SIGTERM), (10, signal.SIGINT)])
def test_stop_and_resume_is_bit_identical(
    tmp_path: Path,
    tiny_llama: Path,
    reference: RunDir,
    monkeypatch: pytest.MonkeyPatch,
    stop_at: int,
    sig: int,
) -> None:
    cfg = make_config(tmp_path, tiny_llama)
    stop_with_signal_at(monkeypatch, stop_at, sig)
    with pytest.raises(TuneforgeError) as stopped:
        train(cfg)
    run = RunDir(Path(cfg.train.output_dir))
    name = signal.Signals(sig).name
    assert stopped.value.exit_code == EXIT_INTERRUPTED == 3
    assert str(stopped.value) == (
        f"stopped by {name} after step {stop_at}; checkpoint step-{stop_at:08d} holds step {stop_at}\n"
        f"  fix: continue with: tuneforge train {run.config_path} --resume"
    )
    assert run.manifest["status"] == "interrupted"
    assert complete_checkpoints(run.checkpoints)[-1].name == f"step-{stop_at:08d}"
    assert [r["step"] for r in records(run) if "split" not in r] == list(range(1, stop_at + 1))

    monkeypatch.undo()
    train(cfg, resume=True)

    assert_same_tensors(final_weights(run), final_weights(reference))
    assert records(run) == records(reference)
    assert run.manifest["status"] == "completed"
    assert run.manifest["resumed_from_step"] == stop_at


def test_resume_after_a_crash_redoes_the_steps_past_the_last_checkpoint(
    tmp_path: Path, tiny_llama: Path, reference: RunDir, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = make_config(tmp_path, tiny_llama)
    stop_with_signal_at(monkeypatch, 8)
    with pytest.raises(TuneforgeError):
        train(cfg)
    run = RunDir(Path(cfg.train.output_dir))
    assert checkpoint_steps(run) == [6, 8]
    # As if the process had died after step 8 but before its checkpoint: steps 7-8 are logged, not saved.
    shutil.rmtree(run.checkpoints / "step-00000008")
    monkeypatch.undo()
    train(cfg, resume=True)
    assert records(run) == records(reference)  # 7 and 8 logged once, by the resumed run
    assert_same_tensors(final_weights(run), final_weights(reference))


def test_full_fine_tuning_resume_is_bit_identical(
    tmp_path: Path, tiny_llama: Path, reference_full: RunDir, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = make_config(tmp_path, tiny_llama, FULL)
    interrupted_at(cfg, monkeypatch, 9)
    run = train(cfg, resume=True)
    weights = final_weights(run)
    assert len(weights) > 20  # the whole model, not an adapter
    assert_same_tensors(weights, final_weights(reference_full))
    assert records(run) == records(reference_full)


def test_checkpoint_holds_step_position_and_counters(
    tmp_path: Path, tiny_llama: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = make_config(tmp_path, tiny_llama, {"train.keep_checkpoints": 1})
    stop_with_signal_at(monkeypatch, 7)
    with pytest.raises(TuneforgeError):
        train(cfg)
    run = RunDir(Path(cfg.train.output_dir))
    # Saved: 3 and 6 (save_every), 4 (best after validation), 7 (the signal); kept: the latest and the best.
    assert checkpoint_steps(run) == [4, 7]
    state = read_state(run.checkpoints / "step-00000007")
    assert state["step"] == 7
    assert state["best_step"] == 4
    assert state["evals_without_improvement"] == 0
    assert state["extra"] == {"steps_per_epoch": 7, "processes": 1}
    tokens = [r["tokens"] for r in run.metrics() if r["step"] == 7 and "split" not in r]
    assert state["tokens"] == tokens[0] > 0


def test_changed_config_is_refused_with_a_per_field_diff(
    tmp_path: Path, tiny_llama: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = make_config(tmp_path, tiny_llama)
    run = interrupted_at(cfg, monkeypatch, 2)
    changed = make_config(tmp_path, tiny_llama, {"train.batch_size": 4, "train.learning_rate": 1e-3})
    with pytest.raises(TuneforgeError) as refused:
        train(changed, resume=True)
    assert str(refused.value) == (
        f"{run.config_path}: the config or data differ from what this run started with, so resuming would "
        "not continue the same training:\n"
        "  train.batch_size: 2 -> 4\n"
        "  train.learning_rate: 0.005 -> 0.001\n"
        "  fix: resume with the original config and data, or pass --force to continue with the new ones"
    )
    assert checkpoint_steps(run) == [2]  # nothing was touched

    train(changed, resume=True, force=True)
    assert run.manifest["status"] == "completed"
    assert "batch_size: 4" in run.config_path.read_text()


def test_resumable_keys_change_nothing_that_is_computed(
    tmp_path: Path, tiny_llama: Path, reference: RunDir, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = make_config(tmp_path, tiny_llama)
    interrupted_at(cfg, monkeypatch, 6)
    resumable = {
        "train.save_every": 5,
        "train.keep_checkpoints": 1,
        "train.log_to": ["tensorboard"],
        "train.max_bad_steps": 2,
        "eval.batch_size": 3,
    }
    run = train(make_config(tmp_path, tiny_llama, resumable), resume=True)
    assert_same_tensors(final_weights(run), final_weights(reference))
    assert records(run) == records(reference)
    assert checkpoint_steps(run) == [14]  # keep_checkpoints=1 took effect (14 is the latest and the best)


def test_keys_that_change_the_result_are_refused(
    tmp_path: Path, tiny_llama: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = make_config(tmp_path, tiny_llama)
    interrupted_at(cfg, monkeypatch, 2)
    changes = {
        "train.max_steps": (None, 20),  # stretches the learning-rate schedule
        "train.epochs": (2.0, 3.0),
        "train.eval_every": (4, 5),  # moves the best checkpoint and early stopping
        "train.seed": (7, 8),
        "train.gradient_accumulation_steps": (2, 1),
        "method.dropout": (0.1, 0.2),
        "model.max_length": (64, 80),
    }
    for key, (old, new) in changes.items():
        with pytest.raises(TuneforgeError) as refused:
            train(make_config(tmp_path, tiny_llama, {key: new}), resume=True)
        assert f"\n  {key}: {old!r} -> {new!r}\n" in str(refused.value), key


def test_changed_data_is_refused(tmp_path: Path, tiny_llama: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = make_config(tmp_path, tiny_llama)
    run = interrupted_at(cfg, monkeypatch, 2)
    before = run.manifest["dataset"]["fingerprint"]
    data = Path(cfg.data.path or "")
    data.write_text(data.read_text() + "great love car number 999,positive\n")
    with pytest.raises(TuneforgeError) as refused:
        train(cfg, resume=True)
    after = RunDir(Path(cfg.data.output_dir or "")).path
    from tuneforge.artifacts import DatasetDir

    now = DatasetDir(after).manifest["fingerprint"]
    assert now != before
    assert f"\n  dataset fingerprint: {before!r} -> {now!r}\n" in str(refused.value)
    assert checkpoint_steps(run) == [2]


def test_resume_with_another_batching_is_refused(
    tmp_path: Path, tiny_llama: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import json

    cfg = make_config(tmp_path, tiny_llama)
    run = interrupted_at(cfg, monkeypatch, 2)
    # A checkpoint written by a 2-process run (accelerate launch): its step means another data position here.
    state_path = run.checkpoints / "step-00000002" / "state.json"
    meta = json.loads(state_path.read_text())
    meta["train"]["extra"]["processes"] = 2
    state_path.write_text(json.dumps(meta))
    with pytest.raises(TuneforgeError) as refused:
        train(cfg, resume=True)
    assert str(refused.value).startswith(
        "train.output_dir: the checkpoint at step 2 was made with a different batching:\n"
        "  processes: 2 -> 1\n"
    )


def test_resume_without_a_run_says_so(tmp_path: Path, tiny_llama: Path) -> None:
    cfg = make_config(tmp_path, tiny_llama)
    with pytest.raises(TuneforgeError, match=r"there is no run to resume in .*run"):
        train(cfg, resume=True)


def test_a_completed_run_resumed_stays_the_same(tmp_path: Path, tiny_llama: Path, reference: RunDir) -> None:
    run = train(make_config(tmp_path, tiny_llama, {"train.save_every": 0}))
    train(make_config(tmp_path, tiny_llama, {"train.save_every": 0}), resume=True)
    assert records(run) == records(reference)
    assert_same_tensors(final_weights(run), final_weights(reference))


def test_a_checkpoint_of_the_older_format_is_refused_clearly(
    tmp_path: Path, tiny_llama: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Format 1 keyed optimizer state by parameter position; reading it by name would mismatch silently."""
    import json

    from safetensors.torch import load_file

    cfg = make_config(tmp_path, tiny_llama)
    run = interrupted_at(cfg, monkeypatch, 3)
    newest = complete_checkpoints(run.checkpoints)[-1]
    names = {k.rsplit(".", 1)[0] for k in load_file(newest / "optimizer.safetensors")}
    assert names and all(".lora_" in n for n in names)  # keyed by parameter name
    state_file = newest / "state.json"
    state = json.loads(state_file.read_text())
    del state["format"]
    state_file.write_text(json.dumps(state))
    with pytest.raises(
        TuneforgeError, match="earlier tuneforge in checkpoint format 1; this one reads format 2"
    ):
        train(cfg, resume=True)
