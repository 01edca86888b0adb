"""report.md and report.html: the manifest's numbers, plots, duplicate clusters, leakage, rejected rows."""

from __future__ import annotations

import base64
import json
import random
import re
from pathlib import Path

import pytest

from tuneforge.config import DataConfig
from tuneforge.data import prepare_dataset


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("report")
    rng = random.Random(0)
    rows = [
        {"text": " ".join(f"w{rng.randrange(10**6)}" for _ in range(15)), "label": "ab"[i % 2]}
        for i in range(40)
    ]
    rows += [{"text": rows[0]["text"] + "!", "label": "a"}] * 3  # a cluster of four
    rows += [{"text": "<script>alert(1)</script> & more", "label": "a"}] * 2  # shown escaped in HTML
    rows.append({"text": "only c", "label": "c"})  # a class too small for every split
    lines = [json.dumps(r) for r in rows] + ["not json"]
    src = tmp / "data.jsonl"
    src.write_text("\n".join(lines) + "\n")
    return prepare_dataset(DataConfig(path=str(src), output_dir=str(tmp / "ds"), on_error="drop")).path


def test_markdown_report_holds_the_numbers(dataset: Path) -> None:
    md = (dataset / "report.md").read_text()
    m = json.loads((dataset / "manifest.json").read_text())
    assert m["counts"]["written"] == 42 and m["counts"]["exact_duplicates"] == 4
    assert f"Format **classification**, 42 rows written of 47 read: train {m['splits']['train']}" in md
    assert "| deduplicate | 46 | 42 | dropped exact_duplicate: 4, near_duplicate: 0 |" in md
    assert "| validate | 47 | 46 | dropped invalid_json: 1 |" in md
    for label, row in (("c", "| c | 1 | 0 | 0 |"), ("a", "| a |"), ("b", "| b |")):
        assert row in md, label
    assert "- label 'c' is missing from the validation split" in md
    assert "1. 4 rows (exact, 1 kept)" in md and "2. 2 rows (exact, 1 kept)" in md
    src = dataset.parent / "data.jsonl"
    assert f"- `{src}:47` [invalid_json] not valid JSON: Expecting value at column 1" in md
    assert "| all | 42 | 2 | " in md  # token length stats: 42 rows, the shortest of 2 words


def test_html_report_is_self_contained_with_two_plots(dataset: Path) -> None:
    page = (dataset / "report.html").read_text()
    images = re.findall(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'", page)
    assert len(images) == 2
    for img in images:
        assert base64.b64decode(img).startswith(b"\x89PNG\r\n\x1a\n")
    assert "<h2>Label distribution</h2>" in page and "<h2>Length histogram</h2>" in page
    assert not re.search(r"(src|href)=['\"]?https?:", page)
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp; more" in page and "<script>" not in page
    assert "<li>4 rows (exact, 1 kept)<ul>" in page
    assert "<td>invalid_json</td>" in page
    assert "label &#x27;c&#x27; is missing from the test split" in page


def test_manifest_lists_sources_clusters_and_output_fingerprint(dataset: Path) -> None:
    import hashlib

    m = json.loads((dataset / "manifest.json").read_text())
    src = dataset.parent / "data.jsonl"
    assert m["source_files"] == [{"path": str(src), "sha256": hashlib.sha256(src.read_bytes()).hexdigest()}]
    assert m["source"] == {"path": str(src), "reader": "jsonl", "remote": False}
    files = {n: hashlib.sha256((dataset / n).read_bytes()).hexdigest() for n in m["files"]}
    assert m["files"] == files
    assert (
        m["output_fingerprint"]
        == hashlib.sha256(
            "".join(files[f"{s}.jsonl"] for s in ("train", "validation", "test")).encode()
        ).hexdigest()
    )
    top = m["duplicates"]["largest"][0]
    assert (top["size"], top["kind"], top["kept"]) == (4, "exact", 1)
    assert [e["where"] for e in top["examples"]] == [f"{src}:1", f"{src}:41", f"{src}:42"]
    assert m["config"]["dedup"] == "near" and list(m)[:4] == [
        "kind",
        "tuneforge_version",
        "format",
        "fingerprint",
    ]
