"""The estimate of a head run: one forward pass over every text (long ones in windows), no training terms."""

from __future__ import annotations

from pathlib import Path

import pytest

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


def test_short_texts_are_embedded_at_a_higher_share_of_the_measured_speed(
    tiny_bert: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Measured: a frozen MiniLM reaches 0.70 of the matmul speed on tweets (31 tokens a window) and 0.50 on
    128-token windows; the estimate's seconds per token follow (HEAD_UTILISATION)."""

    def seconds_per_token(mean: int) -> float:
        rows = 1000
        stats = {"count": rows, "total": rows * mean, "max": mean, "p90": mean, "p99": mean}
        manifest = {
            **MANIFEST,
            "splits": {"train": rows, "validation": 0},
            "token_lengths": {"train": stats, "validation": {"count": 0}},
        }
        cfg = head_cfg(tiny_bert)
        _, tokens = est.head_work(cfg, manifest)
        e = est.estimate(cfg, device=CPU, manifest=manifest)
        assert e.epoch_s is not None
        return e.epoch_s / tokens

    # Windows of 30 and 126 tokens with [CLS]/[SEP]: beyond what the longer windows' attention adds per
    # token (the ratio at one flat utilisation), 0.70 against 0.5 + 0.2 * 2/96 of the speed.
    ratio = seconds_per_token(124) / seconds_per_token(28)
    monkeypatch.setattr(est, "HEAD_UTILISATION", ((32, 0.5), (128, 0.5)))
    flat = seconds_per_token(124) / seconds_per_token(28)
    assert ratio / flat == pytest.approx(0.70 / (0.5 + 0.2 * 2 / 96))
    assert est.head_utilisation("cpu", 500) == 0.50 and est.head_utilisation("cuda", 30) == 0.4
