"""Training on packed rows: the same per-step losses as padded batches, and resume stays bit-identical."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.unit.train.tiny_runs import (
    assert_same_tensors,
    final_weights,
    interrupted_at,
    make_config,
    records,
)
from tuneforge.artifacts import RunDir
from tuneforge.train import train
from tuneforge.train.loop import Loop

# No dropout: a packed row draws its dropout masks in another shape, so only then are the losses comparable.
SHORT = {"train.max_steps": 4, "train.eval_every": 2, "train.save_every": 0, "method.dropout": 0.0}


def packed_flags(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Records whether each Loop built during the test packs its micro-batches."""
    flags: list[bool] = []
    real_init = Loop.__init__

    def init(self: Loop, *args: object, **kwargs: object) -> None:
        real_init(self, *args, **kwargs)  # type: ignore[arg-type]
        flags.append(self.packing)

    monkeypatch.setattr(Loop, "__init__", init)
    return flags


def test_packed_and_padded_runs_have_the_same_losses(
    tmp_path: Path, tiny_llama: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    flags = packed_flags(monkeypatch)
    packed = train(make_config(tmp_path, tiny_llama, SHORT, name="packed"))
    padded = train(make_config(tmp_path, tiny_llama, SHORT | {"train.pack_examples": False}, name="padded"))
    assert flags == [True, False]
    a, b = records(packed), records(padded)
    assert [r["step"] for r in a] == [r["step"] for r in b] == [1, 2, 2, 3, 4, 4]
    assert [r["tokens"] for r in a if "tokens" in r] == [r["tokens"] for r in b if "tokens" in r]
    for x, y in zip(a, b, strict=True):
        assert x["loss"] == pytest.approx(y["loss"], rel=1e-5), x["step"]
    assert len({r["loss"] for r in a}) == len(a)  # the losses move, so the agreement above means something


def test_resume_with_packing_is_bit_identical(
    tmp_path: Path, tiny_llama: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reference = train(make_config(tmp_path, tiny_llama, {"train.save_every": 0}, name="ref"))
    cfg = make_config(tmp_path, tiny_llama, name="stopped")
    assert cfg.train.pack_examples  # the default
    interrupted_at(cfg, monkeypatch, 5)
    flags = packed_flags(monkeypatch)
    resumed = train(cfg, resume=True)
    assert flags == [True]
    assert records(resumed) == records(reference)
    assert_same_tensors(final_weights(resumed), final_weights(reference))


def test_prompt_tuning_trains_unpacked_whatever_the_setting(
    tmp_path: Path, tiny_llama: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    flags = packed_flags(monkeypatch)
    short = {k: v for k, v in SHORT.items() if k != "method.dropout"}
    method = {"method": {"name": "prompt-tuning", "num_virtual_tokens": 4}}
    runs: list[RunDir] = [
        train(make_config(tmp_path, tiny_llama, method | short | {"train.pack_examples": on}, name=str(on)))
        for on in (True, False)
    ]
    assert flags == [False, False]
    assert records(runs[0]) == records(runs[1])
