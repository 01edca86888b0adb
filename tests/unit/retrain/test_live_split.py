"""The live held-out part: seeded, stratified by label, copies together; export folders found."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from tuneforge.errors import TuneforgeError
from tuneforge.retrain.sources import _held_out, live_file


def test_the_held_out_part_is_seeded_stratified_and_keeps_copies_together() -> None:
    rows = [{"text": f"text {i}", "label": "yes" if i % 4 else "no"} for i in range(80)]  # 60 yes, 20 no
    rows += [{"text": "Text 3", "label": "yes"}]  # a copy of row 3 as prepare matches them (case)
    held = _held_out(rows, "classification", 0.25, seed=0)
    assert held == _held_out(rows, "classification", 0.25, seed=0)
    assert held != _held_out(rows, "classification", 0.25, seed=1)
    assert Counter(rows[i]["label"] for i in held if i != 80 and i != 3) in (
        Counter(yes=15, no=5),
        Counter(yes=14, no=5),
    )
    assert (3 in held) == (80 in held)
    assert _held_out(rows, "classification", 0.0, seed=0) == set()


def test_a_feedback_export_is_found_by_its_manifest_and_only_its_format_is_read(tmp_path: Path) -> None:
    export = tmp_path / "export"
    export.mkdir()
    (export / "classify.jsonl").write_text('{"text": "a", "label": "yes"}\n')
    (export / "export.json").write_text(json.dumps({"kind": "tuneforge.feedback-export"}))
    assert live_file(str(export), "classification") == export / "classify.jsonl"
    assert live_file(str(export / "classify.jsonl"), "classification") == export / "classify.jsonl"
    with pytest.raises(
        TuneforgeError, match=r"has no chat\.jsonl chat corrections \(it has: classify\.jsonl\)"
    ):
        live_file(str(export), "chat")
    (export / "export.json").write_text(json.dumps({"kind": "something else"}))
    assert live_file(str(export), "classification") is None  # a plain folder of data


def test_unreadable_new_rows_follow_the_champions_data_on_error(tmp_path: Path) -> None:
    """A row `prepare` would set aside under data.on_error: drop is left out of retrain.data too (counted as
    dropped); under raise it stops the retrain with its file and line."""
    from tuneforge.config import DataConfig
    from tuneforge.retrain.sources import _new_rows

    new = tmp_path / "new.csv"
    # UTF-8 (the café rows say so to the encoding check), one row with a stray Latin-1 byte
    new.write_bytes(b"text,label\ngood day,yes\nbad \xe4 bytes,no\n" + "café,yes\n".encode() * 20)
    cfg = DataConfig(path=str(new), text_column="text", label_column="label")
    with pytest.raises(TuneforgeError, match="invalid utf-8") as err:
        list(_new_rows(str(new), cfg, "classification"))
    assert err.value.where == f"retrain.data: {new}:3"
    rows = list(_new_rows(str(new), cfg.model_copy(update={"on_error": "drop"}), "classification"))
    assert [r and (r["text"], r["label"]) for r in rows] == [("good day", "yes"), None] + [
        ("café", "yes")
    ] * 20
