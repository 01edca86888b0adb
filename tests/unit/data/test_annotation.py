"""Annotation projects (data/annotation.py): assignment of rows to annotators with k per row, skip and undo,
nobody overwriting anybody, agreement over the stored labels, disagreements, and the exports."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.tiny import write_jsonl
from tuneforge.data.annotation import AnnotationStore, Project, parse_labels, prepare_export, rows_from_file
from tuneforge.errors import TuneforgeError
from tuneforge.evaluation.agreement import agreement


def store_with(
    tmp_path: Path, n: int = 4, k: int = 2, labels: str = "pos, neg"
) -> tuple[AnnotationStore, Project]:
    store = AnnotationStore(tmp_path / "state.sqlite3")
    pid = store.create(
        "p", [{"text": f"row {i}"} for i in range(n)], labels=parse_labels(labels), k=k, source="x"
    )
    project = store.project(pid)
    assert project is not None
    return store, project


def test_each_row_goes_to_k_annotators_and_skip_and_undo_move_only_ones_own(tmp_path: Path) -> None:
    store, p = store_with(tmp_path, n=3, k=2)
    assert store.next_item(p.id, "ann", p.k) == 0
    store.save(p, 0, "ann", "pos")
    store.save(p, 0, "bob", "neg")
    # row 0 has its 2 labels: carol starts at row 1
    assert store.next_item(p.id, "carol", p.k) == 1
    store.save(p, 1, "ann", "", skipped=True)
    assert store.next_item(p.id, "ann", p.k) == 2
    assert store.undo(p.id, "ann") == 1  # the skip, the latest
    assert store.next_item(p.id, "ann", p.k) == 1
    # bob relabels row 0: ann's label stays
    store.save(p, 0, "bob", "pos")
    assert store.labels(p.id) == {0: {"ann": "pos", "bob": "pos"}}
    assert store.undo(p.id, "bob") == 0
    assert store.labels(p.id) == {0: {"ann": "pos"}}
    assert store.undo(p.id, "nobody") is None
    assert store.progress(p) == {"rows": 3, "complete": 0, "per_annotator": {"ann": 1}}


def test_bad_labels_rows_and_names_are_refused_with_the_reason(tmp_path: Path) -> None:
    store, p = store_with(tmp_path)
    with pytest.raises(TuneforgeError) as err:
        store.save(p, 0, "ann", "maybe")
    assert err.value.what == "'maybe' is not a label of p"
    with pytest.raises(TuneforgeError) as err:
        store.save(p, 99, "ann", "pos")
    assert err.value.what == "project p has no row 99"
    with pytest.raises(TuneforgeError) as err:
        store.save(p, 0, " ", "pos")
    assert err.value.what == "an annotator name (1–100 characters) is needed"
    with pytest.raises(TuneforgeError) as err:
        parse_labels(",".join(str(i) for i in range(10)))
    assert err.value.what == "10 labels given; at most 9 (one key 1–9 each)"
    with pytest.raises(TuneforgeError) as err:
        store.create("p", [{"text": "a"}], labels=[], k=1, source="x")
    assert err.value.what == "a project named 'p' exists already"


def test_kappa_and_alpha_of_a_known_table_from_the_stored_labels(tmp_path: Path) -> None:
    # 10 rows, table [[4, 1], [1, 4]]: observed 0.8, chance 0.5 → kappa 0.6
    store, p = store_with(tmp_path, n=10)
    a = ["pos"] * 5 + ["neg"] * 5
    b = ["pos"] * 4 + ["neg"] + ["pos"] + ["neg"] * 4
    for i in range(10):
        store.save(p, i, "ann", a[i])
        store.save(p, i, "bob", b[i])
    got = agreement(store.labels_by_annotator(p.id))
    assert got["cohen_kappa"] == pytest.approx(0.6)
    # Krippendorff's alpha, nominal, 2 coders, 20 values: 1 - (n-1) * D_o / D_e = 1 - 19 * 0.2 / 10 = 0.62
    assert got["krippendorff_alpha"] == pytest.approx(0.62)
    assert [(i, by) for i, _, by in store.disagreements(p.id)] == [
        (4, {"ann": "pos", "bob": "neg"}),
        (5, {"ann": "neg", "bob": "pos"}),
    ]
    store.resolve(p, 4, "neg", "lead")
    assert [i for i, _, _ in store.disagreements(p.id)] == [5]
    final = store.final(p.id)
    assert 5 not in final and final[4] == "neg" and final[0] == "pos" and len(final) == 9


def test_export_is_a_raw_file_that_prepare_turns_into_a_dataset(tmp_path: Path) -> None:
    store, p = store_with(tmp_path, n=12, k=1)
    for i in range(12):
        store.save(p, i, "ann", "pos" if i % 2 else "neg")
    raw, fmt, n = store.export_raw(p, tmp_path / "out" / "labelled.jsonl")
    assert (fmt, n) == ("classification", 12)
    assert raw.read_text().splitlines()[:2] == [
        '{"text": "row 0", "label": "neg"}',
        '{"text": "row 1", "label": "pos"}',
    ]
    raw, _, _ = store.export_raw(p, tmp_path / "out" / "labelled.jsonl")  # its own file: replaced
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "labelled.jsonl").write_text("my notes")
    with pytest.raises(TuneforgeError) as err:
        store.export_raw(p, tmp_path / "mine" / "labelled.jsonl")
    assert err.value.what.endswith("mine/labelled.jsonl exists and was not written by an annotation export")
    assert (tmp_path / "mine" / "labelled.jsonl").read_text() == "my notes"
    ds = prepare_export(raw, fmt, tmp_path / "ds")
    rows = [r for s in ("train", "validation", "test") for r in ds.records(s)]
    assert sorted((r["text"], r["label"]) for r in rows) == sorted(
        (f"row {i}", "pos" if i % 2 else "neg") for i in range(12)
    )


def test_free_text_answers_to_chat_rows_export_as_chat(tmp_path: Path) -> None:
    store = AnnotationStore(tmp_path / "s.sqlite3")
    chat = [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "old"}]}]
    p = store.project(store.create("c", chat, labels=[], k=1, source="x"))
    assert p is not None and p.free_text
    with pytest.raises(TuneforgeError) as err:
        store.save(p, 0, "ann", "  ")
    assert err.value.what == "the answer is empty"
    store.save(p, 0, "ann", "hello there")
    raw, fmt, _ = store.export_raw(p, tmp_path / "chat.jsonl")
    assert fmt == "chat"
    assert json.loads(raw.read_text()) == {
        "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello there"}]
    }


def test_label_studio_export_imports_back_to_the_same_labels(tmp_path: Path) -> None:
    store, p = store_with(tmp_path, n=3)
    store.save(p, 0, "ann", "pos")
    store.save(p, 0, "bob", "neg")
    store.save(p, 2, "ann", "neg")
    tasks = store.label_studio(p)
    assert tasks[0] == {
        "id": 1,
        "data": {"text": "row 0"},
        "annotations": [
            {
                "completed_by": {"email": "ann"},
                "result": [
                    {
                        "from_name": "label",
                        "to_name": "text",
                        "type": "choices",
                        "value": {"choices": ["pos"]},
                    }
                ],
            },
            {
                "completed_by": {"email": "bob"},
                "result": [
                    {
                        "from_name": "label",
                        "to_name": "text",
                        "type": "choices",
                        "value": {"choices": ["neg"]},
                    }
                ],
            },
        ],
    }
    back = store.project(
        store.import_label_studio("again", json.loads(json.dumps(tasks)), k=2, source="ls.json")
    )
    assert back is not None and back.labels == ["pos", "neg"] and store.size(back.id) == 3
    assert store.labels(back.id) == store.labels(p.id)
    with pytest.raises(TuneforgeError) as err:
        store.import_label_studio("bad", {"tasks": []}, k=1, source="ls.json")
    assert err.value.what == "ls.json is not a Label Studio export (a JSON list of tasks)"


def test_a_raw_csv_goes_through_the_data_stages_reader(tmp_path: Path) -> None:
    (tmp_path / "raw.csv").write_text('review,stars\ngood film,5\n"bad, slow",1\n')
    assert rows_from_file(tmp_path / "raw.csv") == [
        {"review": "good film", "stars": "5"},
        {"review": "bad, slow", "stars": "1"},
    ]
    store = AnnotationStore(tmp_path / "s.sqlite3")
    pid = store.create("csv", rows_from_file(tmp_path / "raw.csv"), labels=["good"], k=1, source="raw.csv")
    assert store.item(pid, 1) == ("bad, slow", {"review": "bad, slow", "stars": "1"})
    write_jsonl(tmp_path / "raw.jsonl", [{"text": "a"}])
    assert rows_from_file(tmp_path / "raw.jsonl") == [{"text": "a"}]
