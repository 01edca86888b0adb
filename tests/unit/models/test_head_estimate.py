"""The estimate of a head run: one forward pass over every text (long ones in windows), no training terms."""

from __future__ import annotations

from pathlib import Path

from tuneforge.config import config_from_dict
from tuneforge.models import estimate as est

CPU = est.Device("test CPU", "cpu", 64 * 2**30, 1e10)
MANIFEST = {
    "format": "classification",
    "labels": ["a", "b"],
    "splits": {"train": 10, "validation": 2},
    "token_lengths": {
        "train": {"count": 10, "total": 2000, "max": 500, "p90": 400, "p99": 500},
        "validation": {"count": 2, "total": 100, "max": 60, "p90": 60, "p99": 60},
    },
}


def head_cfg(model: Path, method: str = "head", **options: object):
    return config_from_dict(
        {
            "data": {"path": "unused.csv"},
            "model": {"name": str(model), "task": "classification", "max_length": 128},
            "method": {"name": method, **options},
        }
    )


def test_head_work_counts_the_extra_windows_of_long_texts(tiny_bert: Path) -> None:
    # train: 2000 tokens in 10 texts of at most 126 tokens each leave 740 beyond one window, read 62 new
    # tokens (128 - 2 special - 64 shared) per extra window: 12 extra windows; validation fits in one each.
    windows, tokens = est.head_work(head_cfg(tiny_bert), MANIFEST)
    assert windows == 10 + 12 + 2
    assert tokens == (1260 + 2 * 22 + 12 * 64 + 740) + (100 + 2 * 2)
    assert est.head_work(head_cfg(tiny_bert, stride=0), MANIFEST)[0] == 10 + 6 + 2  # ceil(740 / 126)
    capped = head_cfg(tiny_bert)
    capped.train.eval_max_examples = 1  # the first validation text only: half of its 100 tokens
    assert est.head_work(capped, MANIFEST) == (22 + 1, 2812 + 50 + 2)


def test_a_head_estimate_is_forward_only_and_says_so(tiny_bert: Path) -> None:
    head = est.estimate(head_cfg(tiny_bert, batch_size=8), device=CPU, manifest=MANIFEST)
    assert head.steps_per_epoch == 3  # 24 windows, 8 per forward pass
    assert head.breakdown["gradients"] == head.breakdown["optimizer"] == head.breakdown["trainable"] == 0
    assert head.trainable_params == 2 * 32 + 2  # only the classifier counts as trained
    assert any("to embed every text once (3 forward passes of 8 windows)" in line for line in head.lines())
    lora = est.estimate(head_cfg(tiny_bert, "lora"), device=CPU, manifest=MANIFEST)
    assert head.epoch_s is not None and lora.epoch_s is not None and head.epoch_s < lora.epoch_s
