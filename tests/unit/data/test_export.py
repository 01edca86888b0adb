"""Export of a prepared dataset to OpenAI chat JSONL and Alpaca JSON: exact bytes, refusals, atomic writes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tuneforge.artifacts import DatasetDir
from tuneforge.data.export import export_dataset
from tuneforge.errors import TuneforgeError

CHAT = [
    {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello!"},
            {"role": "user", "content": "Bye"},
            {"role": "assistant", "content": "Bye!"},
        ]
    },
    {"messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]},
]


def dataset(tmp_path: Path, fmt: str, records: list[dict[str, Any]], **manifest: Any) -> Path:
    """A prepared dataset directory written by hand: the test depends only on the on-disk contract."""
    d = tmp_path / "ds"
    d.mkdir()
    (d / "manifest.json").write_text(json.dumps({"kind": DatasetDir.KIND, "format": fmt, **manifest}))
    (d / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return d


def lines(path: Path) -> list[Any]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_chat_to_openai_is_the_messages_unchanged(tmp_path: Path) -> None:
    out = tmp_path / "train.openai.jsonl"
    assert export_dataset(dataset(tmp_path, "chat", CHAT), to="openai", out=out) == 2
    assert lines(out) == CHAT


def test_chat_to_alpaca_keeps_system_and_history(tmp_path: Path) -> None:
    out = tmp_path / "alpaca.json"
    export_dataset(dataset(tmp_path, "chat", CHAT), to="alpaca", out=out)
    assert json.loads(out.read_text()) == [
        {
            "instruction": "Bye",
            "input": "",
            "output": "Bye!",
            "system": "Be brief.",
            "history": [["Hi", "Hello!"]],
        },
        {"instruction": "2+2?", "input": "", "output": "4"},
    ]
    assert out.read_text().startswith('[\n  {"instruction": "Bye"')


def test_a_conversation_alpaca_cannot_hold_is_refused_and_nothing_written(tmp_path: Path) -> None:
    odd = [*CHAT, {"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]}]
    d = dataset(tmp_path, "chat", odd)
    out = tmp_path / "out" / "alpaca.json"
    with pytest.raises(TuneforgeError) as err:
        export_dataset(d, to="alpaca", out=out)
    assert err.value.where == f"{d / 'train.jsonl'}:3"
    assert "strict alternation" in err.value.what
    assert list((tmp_path / "out").iterdir()) == []  # no temporary file left either


def test_instruction_records(tmp_path: Path) -> None:
    recs = [
        {"instruction": "Add.", "input": "1+1", "output": "2"},
        {"instruction": "Hi", "input": "", "output": "Yo"},
    ]
    d = dataset(tmp_path, "instruction", recs)
    export_dataset(d, to="openai", out=tmp_path / "o.jsonl")
    assert lines(tmp_path / "o.jsonl") == [
        {"messages": [{"role": "user", "content": "Add.\n\n1+1"}, {"role": "assistant", "content": "2"}]},
        {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}]},
    ]
    export_dataset(d, to="alpaca", out=tmp_path / "a.json")
    assert json.loads((tmp_path / "a.json").read_text()) == recs


def test_classification_uses_the_prompt_template_and_label_set(tmp_path: Path) -> None:
    d = dataset(
        tmp_path,
        "classification",
        [{"text": "great soup", "label": "positive"}],
        labels=["negative", "positive"],
        config={"prompt_template": "Labels: {labels}. Text: {text}"},
    )
    export_dataset(d, to="openai", out=tmp_path / "o.jsonl")
    assert lines(tmp_path / "o.jsonl") == [
        {
            "messages": [
                {"role": "user", "content": "Labels: negative, positive. Text: great soup"},
                {"role": "assistant", "content": "positive"},
            ]
        }
    ]
    export_dataset(d, to="alpaca", out=tmp_path / "a.json")
    assert json.loads((tmp_path / "a.json").read_text()) == [
        {"instruction": "Labels: negative, positive. Text: great soup", "input": "", "output": "positive"}
    ]


def test_preference_to_openai_dpo_and_alpaca(tmp_path: Path) -> None:
    d = dataset(tmp_path, "preference", [{"prompt": "Hi", "chosen": "Hello!", "rejected": "Go away."}])
    export_dataset(d, to="openai", out=tmp_path / "o.jsonl")
    assert lines(tmp_path / "o.jsonl") == [
        {
            "input": {"messages": [{"role": "user", "content": "Hi"}]},
            "preferred_output": [{"role": "assistant", "content": "Hello!"}],
            "non_preferred_output": [{"role": "assistant", "content": "Go away."}],
        }
    ]
    export_dataset(d, to="alpaca", out=tmp_path / "a.json")
    assert json.loads((tmp_path / "a.json").read_text()) == [
        {"instruction": "Hi", "input": "", "chosen": "Hello!", "rejected": "Go away."}
    ]


def test_empty_split_gives_an_empty_array(tmp_path: Path) -> None:
    d = dataset(tmp_path, "chat", [])
    assert export_dataset(d, to="alpaca", out=tmp_path / "a.json") == 0
    assert (tmp_path / "a.json").read_text() == "[]\n"


@pytest.mark.parametrize(
    ("fmt", "kwargs", "where", "what"),
    [
        ("text", {"to": "openai"}, None, "a text dataset has no prompt/answer pairs to export to openai"),
        ("chat", {"to": "excel"}, "--to", "unknown export target 'excel'"),
        ("chat", {"to": "openai", "split": "dev"}, "--split", "unknown split 'dev'"),
    ],
)
def test_refusals(tmp_path: Path, fmt: str, kwargs: dict[str, str], where: str | None, what: str) -> None:
    d = dataset(tmp_path, fmt, [{"text": "x"}])
    with pytest.raises(TuneforgeError) as err:
        export_dataset(d, out=tmp_path / "x.jsonl", **kwargs)  # type: ignore[arg-type]
    assert (err.value.where, err.value.what) == (where, what)
    assert not (tmp_path / "x.jsonl").exists()


def test_cli_export(tmp_path: Path, cli: Any) -> None:
    d = dataset(tmp_path, "chat", CHAT)
    result = cli("export", str(d), "--to", "openai", "--out", "chat.jsonl")
    assert result.returncode == 0, result.stderr
    assert "exported 2 train examples to chat.jsonl" in result.stdout
    assert lines(tmp_path / "chat.jsonl") == CHAT
    bad = cli("export", str(d), "--to", "excel", "--out", "x.json")
    assert bad.returncode == 2
    assert "--to: unknown export target 'excel'" in bad.stderr


def test_export_never_writes_into_the_dataset_or_over_a_folder(tmp_path: Path) -> None:
    d = dataset(tmp_path, "chat", CHAT)
    before = (d / "train.jsonl").read_bytes()
    with pytest.raises(TuneforgeError, match="is inside the dataset"):
        export_dataset(d, to="openai", out=d / "train.jsonl")
    (tmp_path / "folder").mkdir()
    with pytest.raises(TuneforgeError, match="is a folder"):
        export_dataset(d, to="openai", out=tmp_path / "folder")
    assert (d / "train.jsonl").read_bytes() == before
