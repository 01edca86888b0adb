"""Answers the chat template pushes past model.max_length: counted if some are, an error if all are."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.unit.train.tiny_runs import make_config
from tuneforge.errors import TuneforgeError
from tuneforge.train import train


def test_every_answer_cut_off_is_a_clear_error_before_training(tmp_path: Path, tiny_llama: Path) -> None:
    # The data fit (prepare measures the text alone), but the template's turn markers and the prompt do not.
    template = "Please read the following text with care and then classify it:\n{text}"
    cfg = make_config(
        tmp_path,
        tiny_llama,
        {"model.max_length": 16, "data.prompt_template": template, "data.max_tokens": 16},
    )
    with pytest.raises(TuneforgeError, match="none of the first") as err:
        train(cfg)
    assert "model.max_length=16" in str(err.value)
    assert not Path(cfg.train.output_dir).exists()  # no half-made run to block the corrected retry


def test_some_answers_cut_off_are_counted_in_the_manifest(tmp_path: Path, tiny_llama: Path) -> None:
    from tuneforge.artifacts import DatasetDir
    from tuneforge.config import ModelConfig
    from tuneforge.data import prepare_dataset
    from tuneforge.models import load_tokenizer
    from tuneforge.models.encode import IGNORE, encode_chat, to_messages

    probe = make_config(tmp_path, tiny_llama, {"data.max_tokens": 1000})
    dataset: DatasetDir = prepare_dataset(probe.data, model=probe.model)
    tok = load_tokenizer(ModelConfig(name=str(tiny_llama)))
    starts = []  # where each training example's answer begins
    for r in dataset.records("train"):
        labels = encode_chat(tok, to_messages(r, dataset.labels, "{text}"), 10_000)["labels"]
        starts.append(next(i for i, x in enumerate(labels) if x != IGNORE))
    cut = sorted(starts)[len(starts) // 2]  # about half the answers begin at or after this position
    expected = sum(s >= cut for s in starts)
    assert 0 < expected < len(starts)

    run = train(make_config(tmp_path, tiny_llama, {"data.max_tokens": 1000, "model.max_length": cut}))
    assert run.manifest["examples"]["train"] == len(starts)
    assert run.manifest["train_no_targets_seen"] == expected  # two epochs: every example was met
