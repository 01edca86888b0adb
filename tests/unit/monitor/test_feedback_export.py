"""`feedback export`: log corrections → raw data files (by window, in SQL pages), never over others' files."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tuneforge.errors import TuneforgeError
from tuneforge.monitor.feedback import export_feedback, resolve_log
from tuneforge.serve.store import RequestLog, database_url

T0 = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)
CHAT = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "where is my parcel?"}]


def _log(url: str) -> None:
    """Classify, chat and completion answers with feedback: corrections, good ratings, bad ones, too late."""
    log = RequestLog(url)

    def ask(rid: str, endpoint: str, prompt: str, response: str, minute: int, status: int = 200) -> None:
        log.log_request(
            id=rid,
            time=T0 + timedelta(minutes=minute),
            key_name="alice",
            model="m",
            endpoint=endpoint,
            status=status,
            prompt=prompt,
            response=response,
        )

    labels = json.dumps([{"index": 0, "label": "no"}, {"index": 1, "label": "yes"}])
    ask("cls-1", "classify", json.dumps(["late again", "thanks a lot"]), labels, 0)
    ask("cls-2", "classify", json.dumps(["all fine"]), json.dumps([{"index": 0, "label": "yes"}]), 1)
    ask("cls-3", "classify", json.dumps(["meh"]), json.dumps([{"index": 0, "label": "no"}]), 2)
    ask("chatcmpl-1", "chat", json.dumps(CHAT), json.dumps(["no idea"]), 3)
    ask("chatcmpl-2", "chat", json.dumps(CHAT), json.dumps(["It left today."]), 4)
    ask("cmpl-1", "completion", "The capital of France is", json.dumps([" Lyon"]), 5)
    ask("chatcmpl-3", "chat", json.dumps(CHAT), json.dumps(["x"]), 6, status=500)

    def rate(rid: str, rating: int, minute: int, correction: object = None, key: str = "alice") -> None:
        fixed = None if correction is None else json.dumps(correction)
        log.log_feedback(
            request_id=rid, key_name=key, rating=rating, time=T0 + timedelta(minutes=minute), correction=fixed
        )

    rate("cls-1", -1, 10, [None, "no"])
    rate("cls-1", -1, 11, ["yes", None], key="rita")  # a reviewer disagrees: both go to prepare
    rate("cls-2", 1, 12)  # good
    rate("cls-3", -1, 13)  # bad, no correction: nothing to learn
    rate("chatcmpl-1", -1, 14, "Your parcel is on its way.")
    rate("chatcmpl-2", 5, 15)  # good on a 1-5 scale
    rate("cmpl-1", -1, 16, " Paris")
    rate("chatcmpl-3", -1, 17, "sorry")  # an error: no answer to correct
    rate("cls-2", -1, 24 * 60, ["no"], key="rita")  # outside the window below
    log.close()


def _read(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _check_export(url: str, out: Path) -> None:
    until = T0 + timedelta(hours=1)
    result = export_feedback(url, out, T0, until, page=2)  # pages of 2: the keyset paging is exercised
    assert _read(out / "classify.jsonl") == [
        {"text": "thanks a lot", "label": "no"},
        {"text": "late again", "label": "yes"},
    ]
    assert _read(out / "chat.jsonl") == [
        {"messages": [*CHAT, {"role": "assistant", "content": "Your parcel is on its way."}]}
    ]
    assert _read(out / "completion.jsonl") == [{"prompt": "The capital of France is", "response": " Paris"}]
    manifest = json.loads((out / "export.json").read_text())
    assert manifest["files"] == {"chat.jsonl": 1, "classify.jsonl": 2, "completion.jsonl": 1}
    assert manifest["feedback_rows"] == 8 and manifest["since"] == T0.isoformat()
    assert manifest["skipped"] == {"no_correction": 3, "request_not_answered": 1}
    assert result.counts["classify.jsonl"] == 2

    good = export_feedback(url, out, T0, until, include_good=True, min_rating=4, split="train")
    assert _read(out / "chat.jsonl")[1] == {
        "messages": [*CHAT, {"role": "assistant", "content": "It left today."}],
        "split": "train",
    }
    assert good.counts == {"classify.jsonl": 2, "chat.jsonl": 2, "completion.jsonl": 1}  # cls-2 rated 1 < 4
    assert good.skipped == {"not_rated_good": 2, "request_not_answered": 1}


def test_corrections_become_raw_data_files_on_sqlite(tmp_path: Path) -> None:
    url = database_url(str(tmp_path / "log.sqlite"))
    _log(url)
    _check_export(str(tmp_path / "log.sqlite"), tmp_path / "export")


def test_corrections_become_raw_data_files_on_postgresql(postgres: str, tmp_path: Path) -> None:
    _log(postgres)
    _check_export(postgres, tmp_path / "export")


def test_files_tuneforge_did_not_write_are_never_overwritten(tmp_path: Path) -> None:
    url = database_url(str(tmp_path / "log.sqlite"))
    _log(url)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(TuneforgeError, match=r"is not a tuneforge\.feedback-export folder made by tuneforge"):
        export_feedback(url, mine, T0, T0 + timedelta(hours=1))
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]
    out = tmp_path / "export"
    export_feedback(url, out, T0, T0 + timedelta(hours=1))
    (out / "extra.jsonl").write_text("{}\n")  # added by hand: the export is no longer only ours
    with pytest.raises(TuneforgeError, match=r"holds files tuneforge did not write \(extra.jsonl\)"):
        export_feedback(url, out, T0, T0 + timedelta(hours=1))
    assert (out / "extra.jsonl").read_text() == "{}\n"


def test_the_log_is_found_from_a_serve_config_and_a_missing_one_is_one_error(tmp_path: Path) -> None:
    (tmp_path / "log.sqlite").write_bytes(b"")
    config = tmp_path / "serve.yaml"
    config.write_text(f"serve:\n  log_db: {tmp_path / 'log.sqlite'}\n")
    assert resolve_log(str(config)) == str(tmp_path / "log.sqlite")
    assert resolve_log("postgresql+psycopg://u@h/db") == "postgresql+psycopg://u@h/db"
    with pytest.raises(TuneforgeError, match=r"the request log .*nope\.sqlite does not exist"):
        resolve_log(str(tmp_path / "nope.sqlite"))
    config.write_text("serve:\n  log_db: null\n")
    with pytest.raises(TuneforgeError, match="turns the request log off"):
        resolve_log(str(config))
