"""Canonical records: the one shape per format that every later stage reads.

    text            {"text"}
    instruction     {"instruction", "input", "output"}
    chat            {"messages": [{"role", "content"}, ...]}
    classification  {"text", "label": str}
    regression      {"text", "label": float}
    preference      {"prompt", "chosen", "rejected"}

`to_record` maps a source row onto its format's record, or raises `RowProblem` naming the problem class.
"""

from __future__ import annotations

import math
from typing import Any

from tuneforge.config import DataConfig
from tuneforge.errors import TuneforgeError

FORMATS = ("text", "instruction", "chat", "classification", "regression", "preference")
ROLES = ("system", "user", "assistant")
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}

TEXT_NAMES = ("text", "content", "sentence", "review", "document", "body", "tweet")
LABEL_NAMES = ("label", "labels", "sentiment", "class", "category", "target", "score", "rating")


class RowProblem(Exception):
    """A row that cannot become a record: `kind` is the problem class used in counts and reports."""

    def __init__(self, kind: str, message: str) -> None:
        self.kind = kind
        super().__init__(message)


def _pick(columns: list[str], names: tuple[str, ...]) -> str | None:
    lower = {c.lower(): c for c in columns}
    return next((lower[n] for n in names if n in lower), None)


def detect_format(columns: list[str], cfg: DataConfig) -> str:
    """Guess the format from the first row's columns when `data.format` is auto."""
    if cfg.format != "auto":
        return cfg.format
    cols = set(columns)
    if cfg.messages_column or "messages" in cols or "conversations" in cols:
        return "chat"
    if {"prompt", "chosen", "rejected"} <= cols:
        return "preference"
    if cfg.prompt_column or "instruction" in cols:
        return "instruction"
    label = cfg.label_column or _pick(columns, LABEL_NAMES)
    text = cfg.text_column or _pick(columns, TEXT_NAMES)
    if label and text:
        return "classification"
    if text:
        return "text"
    raise TuneforgeError(
        f"cannot tell the data format from the columns {columns}",
        where="data.format",
        fix="set data.format and the column names (data.text_column, data.label_column, ...)",
    )


def resolve_columns(columns: list[str], fmt: str, cfg: DataConfig) -> dict[str, str]:
    """The source column for each record field, auto-detected unless set in the config."""
    mapping: dict[str, str] = {}
    if fmt in ("text", "classification", "regression"):
        text = cfg.text_column or _pick(columns, TEXT_NAMES)
        if text is None:
            raise TuneforgeError(
                f"no text column among {columns}", where="data.text_column", fix="set data.text_column"
            )
        mapping["text"] = text
    if fmt in ("classification", "regression"):
        label = cfg.label_column or _pick(columns, LABEL_NAMES)
        if label is None:
            raise TuneforgeError(
                f"no label column among {columns}", where="data.label_column", fix="set data.label_column"
            )
        mapping["label"] = label
    if fmt == "instruction":
        mapping["instruction"] = cfg.prompt_column or "instruction"
        mapping["input"] = "input"
        mapping["output"] = cfg.response_column or "output"
    if fmt == "chat":
        mapping["messages"] = cfg.messages_column or ("messages" if "messages" in columns else "conversations")
    if fmt == "preference":
        mapping.update(prompt=cfg.prompt_column or "prompt", chosen="chosen", rejected="rejected")
    for field, col in mapping.items():
        if field != "input" and col not in columns and cfg.format != "auto":
            raise TuneforgeError(
                f"column {col!r} (for {field}) is not in the data; columns are {columns}",
                where=f"data.{field if field in ('text', 'label') else 'format'}_column".replace(
                    "format_column", "format"
                ),
            )
    return mapping


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or value == ""


def _text(value: Any, field: str) -> str:
    if _is_missing(value):
        raise RowProblem("missing_value", f"{field} is missing or empty")
    if not isinstance(value, str):
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)
        raise RowProblem("wrong_type", f"{field} must be a string, got {type(value).__name__}")
    return value


def _messages(value: Any) -> list[dict[str, str]]:
    if not isinstance(value, list) or not value:
        raise RowProblem("wrong_type", "messages must be a non-empty list")
    out: list[dict[str, str]] = []
    for i, m in enumerate(value):
        if not isinstance(m, dict):
            raise RowProblem("wrong_type", f"messages[{i}] must be an object")
        if "from" in m and "value" in m:  # ShareGPT
            role = SHAREGPT_ROLES.get(str(m["from"]))
            if role is None:
                raise RowProblem("unknown_role", f"messages[{i}].from {m['from']!r} is not a known role")
            m = {"role": role, "content": m["value"]}
        for key in m:
            if key not in ("role", "content", "name", "weight"):
                raise RowProblem("unknown_key", f"messages[{i}] has unknown key {key!r}")
        if "role" not in m or "content" not in m:
            raise RowProblem("missing_key", f"messages[{i}] needs role and content")
        if m["role"] not in ROLES:
            raise RowProblem("unknown_role", f"messages[{i}].role {m['role']!r} is not one of {list(ROLES)}")
        if not isinstance(m["content"], str):
            raise RowProblem("wrong_type", f"messages[{i}].content must be a string")
        if not m["content"].strip():
            raise RowProblem("empty_content", f"messages[{i}].content is empty")
        if m["role"] == "system" and i != 0:
            raise RowProblem("system_not_first", f"messages[{i}] is a system message but not the first")
        out.append({"role": m["role"], "content": m["content"]})
    if not any(m["role"] == "assistant" for m in out):
        raise RowProblem("no_assistant", "the conversation has no assistant message to learn from")
    return out


def to_record(fields: dict[str, Any], fmt: str, mapping: dict[str, str]) -> dict[str, Any]:
    """Build the canonical record for one row (labels stay raw here; cleaning normalizes them)."""
    if fmt == "chat":
        return {"messages": _messages(fields.get(mapping["messages"]))}
    missing = [col for f, col in mapping.items() if f != "input" and col not in fields]
    if missing:
        raise RowProblem("missing_key", f"missing {', '.join(repr(m) for m in missing)}")
    if fmt == "text":
        return {"text": _text(fields[mapping["text"]], "text")}
    if fmt == "classification":
        label = fields[mapping["label"]]
        if isinstance(label, float) and label.is_integer():
            label = int(label)
        return {"text": _text(fields[mapping["text"]], "text"), "label": _text(label, "label")}
    if fmt == "regression":
        raw = fields[mapping["label"]]
        try:
            value = float(raw)
        except (TypeError, ValueError):
            raise RowProblem("not_a_number", f"label {raw!r} is not a number") from None
        if not math.isfinite(value):
            raise RowProblem("not_a_number", f"label {raw!r} is not a finite number")
        return {"text": _text(fields[mapping["text"]], "text"), "label": value}
    if fmt == "instruction":
        inp = fields.get(mapping["input"])
        return {
            "instruction": _text(fields[mapping["instruction"]], "instruction"),
            "input": "" if _is_missing(inp) else _text(inp, "input"),
            "output": _text(fields[mapping["output"]], "output"),
        }
    if fmt == "preference":
        return {k: _text(fields[mapping[k]], k) for k in ("prompt", "chosen", "rejected")}
    raise RowProblem("unknown_format", f"unknown format {fmt!r}")


def record_text(record: dict[str, Any]) -> str:
    """The text a record is compared by (dedup, leakage) and measured by (length stats)."""
    if "messages" in record:
        return "\n".join(m["content"] for m in record["messages"])
    if "instruction" in record:
        return "\n".join((record["instruction"], record["input"], record["output"]))
    if "prompt" in record:
        return "\n".join((record["prompt"], record["chosen"]))
    return str(record["text"])
