"""Formats: shape detection, column mapping (auto and configured) and the canonical record of each format."""

from __future__ import annotations

from typing import Any

import pytest

from tuneforge.config import DataConfig
from tuneforge.data.records import RowProblem, detect_format, messages, resolve_columns, to_record
from tuneforge.errors import TuneforgeError


def record(fields: dict[str, Any], **cfg: Any) -> dict[str, Any]:
    """Detect, map and build like the pipeline does from a first row."""
    c = DataConfig(**cfg)
    fmt = detect_format(list(fields), c, fields)
    return {"format": fmt, **to_record(fields, fmt, resolve_columns(list(fields), fmt, c))}


def problem(fields: dict[str, Any], fmt: str, **cfg: Any) -> tuple[str, str]:
    c = DataConfig(format=fmt, **cfg)  # type: ignore[arg-type]
    with pytest.raises(RowProblem) as err:
        to_record(fields, fmt, resolve_columns(list(fields), fmt, c))
    return err.value.kind, str(err.value)


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"text": "just words"}, {"format": "text", "text": "just words"}),
        ({"Review": "meh", "id": 3}, {"format": "text", "text": "meh"}),
        ({"sentence": "ok", "label": 1}, {"format": "classification", "text": "ok", "label": "1"}),
        (
            {"tweet": "ok", "sentiment": "Positive"},
            {"format": "classification", "text": "ok", "label": "Positive"},
        ),
        ({"text": "ok", "label": 2.0}, {"format": "classification", "text": "ok", "label": "2"}),
        ({"text": "ok", "label": True}, {"format": "classification", "text": "ok", "label": "true"}),
        ({"text": "ok", "score": 3.7}, {"format": "regression", "text": "ok", "label": 3.7}),
        ({"text": "ok", "score": "0.25"}, {"format": "regression", "text": "ok", "label": 0.25}),
        (
            {"instruction": "Add.", "input": "1+1", "output": "2"},
            {"format": "instruction", "instruction": "Add.", "input": "1+1", "output": "2"},
        ),
        (
            {"instruction": "Name one.", "context": None, "response": "Bob"},
            {"format": "instruction", "instruction": "Name one.", "input": "", "output": "Bob"},
        ),
        (
            {"prompt": "2+2?", "completion": "4"},
            {"format": "instruction", "instruction": "2+2?", "input": "", "output": "4"},
        ),
        (
            {"question": "Capital of France?", "answer": "Paris"},
            {"format": "instruction", "instruction": "Capital of France?", "input": "", "output": "Paris"},
        ),
        (
            {"prompt": "Hi", "chosen": "Hello!", "rejected": "Go away."},
            {"format": "preference", "prompt": "Hi", "chosen": "Hello!", "rejected": "Go away."},
        ),
        (
            {
                "messages": [
                    {"role": "user", "content": "Hi"},
                    {"role": "assistant", "content": "Hey", "weight": 1},
                ]
            },
            {
                "format": "chat",
                "messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hey"}],
            },
        ),
    ],
)
def test_auto_detected_shapes(fields: dict[str, Any], expected: dict[str, Any]) -> None:
    assert record(fields) == expected


def test_sharegpt_conversations_are_converted() -> None:
    fields = {
        "conversations": [
            {"from": "system", "value": "Be brief."},
            {"from": "human", "value": "Hi"},
            {"from": "gpt", "value": "Hello!"},
        ]
    }
    assert record(fields) == {
        "format": "chat",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello!"},
        ],
    }


def test_openai_content_parts_are_joined() -> None:
    parts = [{"type": "text", "text": "Hello, "}, {"type": "text", "text": "world"}]
    assert messages([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": parts}])[1] == {
        "role": "assistant",
        "content": "Hello, world",
    }


def test_configured_columns_override_detection() -> None:
    fields = {"body": "a text", "text": "not this one", "stars": "5"}
    assert record(fields, text_column="body", label_column="stars") == {
        "format": "classification",
        "text": "a text",
        "label": "5",
    }
    assert record(fields, text_column="body", label_column="stars", format="regression")["label"] == 5.0
    chat = {"dialog": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}]}
    assert record(chat, messages_column="dialog")["format"] == "chat"
    pref = {"q": "Hi", "good": "Hello", "bad": "No"}
    assert record(pref, prompt_column="q", chosen_column="good", rejected_column="bad") == {
        "format": "preference",
        "prompt": "Hi",
        "chosen": "Hello",
        "rejected": "No",
    }
    ins = {"task": "Add", "extra": "1+1", "result": "2"}
    assert record(ins, prompt_column="task", input_column="extra", response_column="result") == {
        "format": "instruction",
        "instruction": "Add",
        "input": "1+1",
        "output": "2",
    }


def test_a_configured_column_missing_from_the_data_is_a_config_error() -> None:
    with pytest.raises(TuneforgeError) as err:
        resolve_columns(["text", "label"], "classification", DataConfig(label_column="stars"))
    assert err.value.where == "data.label_column"
    assert err.value.what == "column 'stars' is not in the data; the columns are ['text', 'label']"


def test_undetectable_columns_name_the_keys_to_set() -> None:
    with pytest.raises(TuneforgeError) as err:
        detect_format(["a", "b"], DataConfig())
    assert err.value.where == "data.format"
    assert err.value.what == "cannot tell the data format from the columns ['a', 'b']"


@pytest.mark.parametrize(
    ("fields", "fmt", "expected"),
    [
        ({"text": ""}, "text", ("missing_value", "text is missing or empty")),
        ({"text": None}, "text", ("missing_value", "text is missing or empty")),
        ({"text": ["a"]}, "text", ("wrong_type", "text must be a string, got array")),
        ({"other": "x", "text": {"a": 1}}, "text", ("wrong_type", "text must be a string, got object")),
        (
            {"text": "x", "label": ["a", "b"]},
            "classification",
            ("wrong_type", "label must be a single value, got array"),
        ),
        ({"text": "x", "label": "high"}, "regression", ("not_a_number", "label 'high' is not a number")),
        ({"text": "x", "label": "nan"}, "regression", ("not_a_number", "label 'nan' is not a finite number")),
        ({"text": "x", "label": True}, "regression", ("not_a_number", "label True is not a number")),
        ({"text": "x", "label": ""}, "regression", ("missing_value", "label is missing or empty")),
        ({"instruction": "x"}, "instruction", ("missing_key", "missing 'output'")),
        ({"prompt": "x", "chosen": "y"}, "preference", ("missing_key", "missing 'rejected'")),
        ({"other": 1}, "chat", ("missing_key", "missing 'messages'")),
        ({"messages": "hi"}, "chat", ("wrong_type", "messages must be a list of messages, got string")),
        ({"messages": []}, "chat", ("empty_content", "messages is an empty list")),
        ({"messages": ["hi"]}, "chat", ("wrong_type", "messages[0] must be an object, got string")),
        ({"messages": [{"role": "user"}]}, "chat", ("missing_key", "messages[0] has no 'content'")),
        (
            {"messages": [{"role": "user", "content": 3}]},
            "chat",
            ("wrong_type", "messages[0].content must be a string, got number"),
        ),
        (
            {"messages": [{"from": "alien", "value": "x"}]},
            "chat",
            ("unknown_role", "messages[0].from 'alien' is not a known role"),
        ),
        (
            {"messages": [{"from": "human"}]},
            "chat",
            ("missing_key", "messages[0] needs both 'from' and 'value'"),
        ),
        (
            {"messages": [{"role": "tool", "content": "x"}]},
            "chat",
            ("unknown_role", "messages[0].role 'tool' is not one of ['system', 'user', 'assistant']"),
        ),
    ],
)
def test_row_problems_name_their_class(fields: dict[str, Any], fmt: str, expected: tuple[str, str]) -> None:
    assert problem(fields, fmt) == expected
