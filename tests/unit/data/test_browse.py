"""Pages and search over a JSONL split (the UI's data pages): exact rows, counts, escapes, damaged lines."""

from __future__ import annotations

import json
from pathlib import Path

from tuneforge.data.browse import jsonl_page


def test_pages_of_100k_rows_and_a_search(tmp_path: Path) -> None:
    path = tmp_path / "train.jsonl"
    rows = [
        {"text": f"row {i} {'needle' if i % 1000 == 7 else 'hay'}", "label": str(i % 3)}
        for i in range(100_000)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    page = jsonl_page(path, start=99_990, limit=50)
    assert (page.total, page.matched, page.start) == (100_000, 100_000, 99_990)
    assert page.rows[0] == (99_991, rows[99_990]) and len(page.rows) == 10
    found = jsonl_page(path, query="NEEDLE", start=50, limit=20)
    assert found.matched == 100 and found.total == 100_000
    assert [n for n, _ in found.rows] == [i * 1000 + 8 for i in range(50, 70)]  # 1-based line numbers
    assert jsonl_page(path, query="not there").rows == []


def test_a_query_matches_text_as_json_escapes_it_and_damage_shows(tmp_path: Path) -> None:
    path = tmp_path / "test.jsonl"
    path.write_text(
        json.dumps({"text": 'she said "hi" \\o/'})
        + "\n"
        + '{"text": "cut sh'
        + "\n"
        + json.dumps({"text": "é ok"}, ensure_ascii=False)
        + "\n"
        + json.dumps({"text": "é escaped"})
    )  # no newline at the end
    assert [n for n, _ in jsonl_page(path, query='"hi" \\o').rows] == [1]
    page = jsonl_page(path)
    assert page.rows[1] == (2, '{"text": "cut sh\n') and page.rows[2] == (3, {"text": "é ok"})
    assert jsonl_page(path, query="É").rows == [(3, {"text": "é ok"})]
    assert jsonl_page(path, query="é").rows == [(3, {"text": "é ok"}), (4, {"text": "é escaped"})]
    path.write_text("")
    assert jsonl_page(path).total == 0
