"""Prompts pushed past model.max_length: the text is cut and counted; no room for the answer is an error."""

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


def test_long_prompts_lose_text_not_the_answer_and_are_counted(tmp_path: Path, tiny_llama: Path) -> None:
    from tuneforge.artifacts import DatasetDir
    from tuneforge.config import ModelConfig
    from tuneforge.data import prepare_dataset
    from tuneforge.models import load_tokenizer
    from tuneforge.models.encode import IGNORE, encode_chat, to_messages

    probe = make_config(tmp_path, tiny_llama, {"data.max_tokens": 1000})
    dataset: DatasetDir = prepare_dataset(probe.data, model=probe.model)
    tok = load_tokenizer(ModelConfig(name=str(tiny_llama)))
    starts, lengths = [], []  # where each training example's answer begins, and its whole length
    for r in dataset.records("train"):
        labels = encode_chat(tok, to_messages(r, dataset.labels, "{text}"), 10_000)["labels"]
        starts.append(next(i for i, x in enumerate(labels) if x != IGNORE))
        lengths.append(len(labels))
    cut = sorted(starts)[len(starts) // 2]  # about half the answers begin at or after this position
    expected = sum(s >= cut for s in starts)
    assert 0 < expected < len(starts)

    run = train(make_config(tmp_path, tiny_llama, {"data.max_tokens": 1000, "model.max_length": cut}))
    assert run.manifest["examples"]["train"] == len(starts)
    # The text inside the prompt is cut so that the label still fits (it used to be cut off instead).
    assert run.manifest["train_no_targets_seen"] == 0
    longer = sum(n > cut for n in lengths)
    assert longer > expected  # also those whose answer began before the cut but ended after it
    assert run.manifest["train_truncated_seen"] == {"text": longer}  # two epochs: every example was met
