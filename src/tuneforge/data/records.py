"""Canonical records: the one shape per format that every later stage reads, and the checks that build them.

    text            {"text"}
    instruction     {"instruction", "input", "output"}                 (Alpaca)
    chat            {"messages": [{"role", "content"}, ...]}           (OpenAI; ShareGPT from/value converted)
    classification  {"text", "label": str}
    regression      {"text", "label": float}
    preference      {"prompt", "chosen", "rejected"}

`detect_format` and `resolve_columns` map the source's columns onto a format (auto-detected from common
names unless data.format / data.*_column say); `to_record` builds one record or raises `RowProblem` naming the
problem class (see `PROBLEMS`), in the spirit of OpenAI's fine-tuning data checker.
"""

from __future__ import annotations

import math
import re
from typing import Any

from tuneforge.config import DataConfig
from tuneforge.errors import TuneforgeError

FORMATS = ("text", "instruction", "chat", "classification", "regression", "preference")
MISSING_GROUP = "(missing)"
# How a missing value arrives in a group column: empty or blank, a float NaN, or the text a writer made of
# one (pandas writes NaN as "nan"/"NaN", Python's str(None) is "None", SQL and JSON say null).
MISSING_SPELLINGS = frozenset({"", "nan", "none", "null", "<na>", "n/a", MISSING_GROUP})


def group_value(value: Any) -> str:
    """A group column's value as one name: every spelling of "no value" becomes MISSING_GROUP."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return MISSING_GROUP
    text = str(value).strip()
    return MISSING_GROUP if text.casefold() in MISSING_SPELLINGS else text


ROLES = ("system", "user", "assistant")
SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "chatgpt": "assistant",
    "assistant": "assistant",
    "system": "system",
}
MESSAGE_KEYS = ("role", "content", "name", "weight")

# Every problem class a row can have, and what it means; readers, records and cleaning all use these names.
PROBLEMS: dict[str, str] = {
    "invalid_json": "the line or file is not valid JSON",
    "wrong_type": "a value has the wrong JSON type (e.g. a list where a string belongs)",
    "missing_key": "a required key or column is absent",
    "unknown_key": "a chat message has a key other than role, content, name, weight",
    "unknown_role": "a chat message's role is not system, user or assistant",
    "empty_content": "a chat message has empty content, or the conversation has no messages",
    "no_assistant": "a conversation has no assistant message to learn from",
    "system_not_first": "a system message appears after the first message",
    "unknown_label": "the label is not in data.labels",
    "not_a_number": "a regression target is not a finite number",
    "missing_value": "a text or label is missing or empty",
    "encoding": "bytes that are not valid in the file's encoding",
    "wrong_columns": "a CSV row has a different number of fields than the header",
    "invalid_csv": "a CSV row cannot be parsed",
    "runaway_quote": "an unclosed CSV quote swallowed the lines after it (data.accept_runaway_quotes)",
    "row_too_large": "a row is larger than data.max_row_bytes",
    "too_deep": "a row's values are nested more than 100 levels deep (lists in lists ...)",
    "unsupported_file": "a file in a folder that no reader knows",
    "not_a_file": "a FIFO, socket or device in a folder (opening it could block forever)",
    "invalid_url": "a line of a URL list is not an http(s) URL",
    "fetch_failed": "a listed URL could not be fetched",
    "unsupported_content": "a listed URL is not an HTML or text page",
    "too_short": "the text is shorter than data.clean.min_chars",
    "too_long": "the text is longer than data.clean.max_chars",
    "empty_after_cleaning": "nothing is left of the text after cleaning",
    "identical_answers": "a preference pair's chosen and rejected answers are the same (nothing to prefer)",
    "too_many_tokens": "the example has more tokens than data.max_tokens (data.over_length=drop)",
    "no_trainable_tokens": "truncation would leave no answer tokens to learn from",
    "unknown_split": "the data.split_column value is not train, validation or test",
    "label_conflict": "the same text appears under different labels (data.label_conflicts=drop)",
}

# Common column names per record field, most specific first; data.*_column overrides them.
NAMES: dict[str, tuple[str, ...]] = {
    "text": ("text", "content", "sentence", "review", "document", "body", "tweet", "comment", "passage"),
    "label": ("label", "labels", "sentiment", "class", "category", "target", "score", "rating"),
    "messages": ("messages", "conversations", "conversation"),
    "instruction": ("instruction", "prompt", "question", "query"),
    "input": ("input", "context"),
    "output": ("output", "response", "completion", "answer"),
    "prompt": ("prompt", "instruction", "question", "input"),
    "chosen": ("chosen",),
    "rejected": ("rejected",),
}
FIELDS: dict[str, tuple[str, ...]] = {
    "text": ("text",),
    "classification": ("text", "label"),
    "regression": ("text", "label"),
    "instruction": ("instruction", "input", "output"),
    "chat": ("messages",),
    "preference": ("prompt", "chosen", "rejected"),
}
OPTIONAL = ("input",)


class RowProblem(Exception):
    """A row that cannot become a record: `kind` is the problem class used in counts and reports."""

    def __init__(self, kind: str, message: str) -> None:
        self.kind = kind
        super().__init__(message)


def config_key(field: str) -> str:
    """The data.* key that names the source column of a record field."""
    return {"instruction": "prompt_column", "output": "response_column"}.get(field, f"{field}_column")


def _configured(field: str, cfg: DataConfig) -> str | None:
    return getattr(cfg, config_key(field))  # type: ignore[no-any-return]


def _pick(columns: list[str], field: str, cfg: DataConfig) -> str | None:
    """The column for a record field: the configured one, else the first common name present (any case)."""
    configured = _configured(field, cfg)
    if configured:
        return configured
    lower = {c.lower(): c for c in columns}
    return next((lower[n] for n in NAMES[field] if n in lower), None)


def detect_format(columns: list[str], cfg: DataConfig, first: dict[str, Any] | None = None) -> str:
    """The format from the first row's columns when data.format is auto (its label tells regression)."""
    if cfg.format != "auto":
        return cfg.format
    pick = {field: _pick(columns, field, cfg) for field in NAMES}
    if cfg.messages_column or pick["messages"]:
        return "chat"
    if cfg.chosen_column or cfg.rejected_column or (pick["chosen"] and pick["rejected"]):
        return "preference"
    if cfg.response_column or (pick["instruction"] and pick["output"]):
        return "instruction"
    if pick["text"] and pick["label"]:
        value = (first or {}).get(pick["label"])
        return "regression" if _looks_continuous(value) else "classification"
    if pick["text"]:
        return "text"
    raise TuneforgeError(
        f"cannot tell the data format from the columns {columns}",
        where="data.format",
        fix="set data.format (text, instruction, chat, classification, regression, preference) and the "
        "columns it reads (data.text_column, data.label_column, data.prompt_column, ...)",
    )


def _looks_continuous(value: Any) -> bool:
    """A target like 3.7 (not 3, not "positive") means regression; an integral first value stays a class."""
    if isinstance(value, bool):
        return False
    if isinstance(value, str):
        if "." not in value:
            return False
        try:
            value = float(value)
        except ValueError:
            return False
    return isinstance(value, float) and math.isfinite(value) and not value.is_integer()


def resolve_columns(columns: list[str], fmt: str, cfg: DataConfig) -> dict[str, str]:
    """The source column for each record field: configured, else auto-detected, else the field's usual name.

    A column named in the config but absent from the first row is a config error; an auto-detected one that is
    absent is reported per row (`missing_key`), since rows of JSON sources need not share their keys.
    """
    if fmt not in FIELDS:
        raise TuneforgeError(
            f"unknown format {fmt!r}", where="data.format", fix="use one of: " + ", ".join(FORMATS)
        )
    mapping: dict[str, str] = {}
    for field in FIELDS[fmt]:
        configured = _configured(field, cfg)
        if configured and configured not in columns:
            raise TuneforgeError(
                f"column {configured!r} is not in the data; the columns are {columns}",
                where=f"data.{config_key(field)}",
                fix="name one of the columns above",
            )
        mapping[field] = _pick(columns, field, cfg) or NAMES[field][0]
    return mapping


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or value == ""


def _text(value: Any, field: str) -> str:
    if _is_missing(value):
        raise RowProblem("missing_value", f"{field} is missing or empty")
    if isinstance(value, str):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    raise RowProblem("wrong_type", f"{field} must be a string, got {_type(value)}")


def _type(value: Any) -> str:
    names = {list: "array", dict: "object", str: "string", bool: "boolean", int: "number", float: "number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


def _content(value: Any, i: int) -> str:
    """A message's content: a string, or OpenAI's list of parts of which only text parts are supported."""
    if isinstance(value, list):
        parts = []
        for j, part in enumerate(value):
            if (
                not isinstance(part, dict)
                or part.get("type") != "text"
                or not isinstance(part.get("text"), str)
            ):
                raise RowProblem("wrong_type", f"messages[{i}].content[{j}] must be a text part")
            parts.append(part["text"])
        value = "".join(parts)
    if not isinstance(value, str):
        raise RowProblem("wrong_type", f"messages[{i}].content must be a string, got {_type(value)}")
    return value


def messages(value: Any, field: str = "messages") -> list[dict[str, str]]:
    """Validate a conversation (OpenAI or ShareGPT shape) and return it as [{"role", "content"}, ...]."""
    if value is None:
        raise RowProblem("missing_key", f"missing {field!r}")
    if not isinstance(value, list):
        raise RowProblem("wrong_type", f"{field} must be a list of messages, got {_type(value)}")
    if not value:
        raise RowProblem("empty_content", f"{field} is an empty list")
    out: list[dict[str, str]] = []
    for i, m in enumerate(value):
        if not isinstance(m, dict):
            raise RowProblem("wrong_type", f"messages[{i}] must be an object, got {_type(m)}")
        if "from" in m or "value" in m:  # ShareGPT
            for key in m:
                if key not in ("from", "value", "weight"):
                    raise RowProblem("unknown_key", f"messages[{i}] has unknown key {key!r}")
            if "from" not in m or "value" not in m:
                raise RowProblem("missing_key", f"messages[{i}] needs both 'from' and 'value'")
            role = SHAREGPT_ROLES.get(str(m["from"]).lower())
            if role is None:
                raise RowProblem("unknown_role", f"messages[{i}].from {m['from']!r} is not a known role")
            m = {"role": role, "content": m["value"]}
        for key in m:
            if key not in MESSAGE_KEYS:
                raise RowProblem("unknown_key", f"messages[{i}] has unknown key {key!r}")
        for key in ("role", "content"):
            if key not in m:
                raise RowProblem("missing_key", f"messages[{i}] has no {key!r}")
        if m["role"] not in ROLES:
            raise RowProblem("unknown_role", f"messages[{i}].role {m['role']!r} is not one of {list(ROLES)}")
        content = _content(m["content"], i)
        if not content.strip():
            raise RowProblem("empty_content", f"messages[{i}].content is empty")
        if m["role"] == "system" and i != 0:
            raise RowProblem("system_not_first", f"messages[{i}] is a system message but not the first")
        out.append({"role": m["role"], "content": content})
    if not any(m["role"] == "assistant" for m in out):
        raise RowProblem("no_assistant", "the conversation has no assistant message to learn from")
    return out


def _label(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, list | dict):
        raise RowProblem("wrong_type", f"label must be a single value, got {_type(value)}")
    return _text(value, "label")


def _number(value: Any) -> float:
    if _is_missing(value):
        raise RowProblem("missing_value", "label is missing or empty")
    if isinstance(value, bool | list | dict):
        raise RowProblem("not_a_number", f"label {value!r} is not a number")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise RowProblem("not_a_number", f"label {value!r} is not a number") from None
    if not math.isfinite(number):
        raise RowProblem("not_a_number", f"label {value!r} is not a finite number")
    return number


def to_record(fields: dict[str, Any], fmt: str, mapping: dict[str, str]) -> dict[str, Any]:
    """Build the canonical record for one row (labels stay raw here; cleaning normalizes them)."""
    if fmt == "chat":
        return {"messages": messages(fields.get(mapping["messages"]), mapping["messages"])}
    missing = [col for f, col in mapping.items() if f not in OPTIONAL and col not in fields]
    if missing:
        raise RowProblem("missing_key", f"missing {', '.join(repr(m) for m in missing)}")
    text = fields.get(mapping.get("text", ""))
    if fmt == "text":
        return {"text": _text(text, "text")}
    if fmt == "classification":
        return {"text": _text(text, "text"), "label": _label(fields[mapping["label"]])}
    if fmt == "regression":
        return {"text": _text(text, "text"), "label": _number(fields[mapping["label"]])}
    if fmt == "instruction":
        extra = fields.get(mapping["input"])
        return {
            "instruction": _text(fields[mapping["instruction"]], "instruction"),
            "input": "" if _is_missing(extra) else _text(extra, "input"),
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


def prompt_and_answer(record: dict[str, Any], labels: list[str], template: str) -> tuple[str, str]:
    """(user turn, assistant turn) of an instruction, classification or preference record.

    The one place that decides how such records read as a conversation, for training and for export alike:
    instruction and input joined by a blank line; `template` filled with the text and the label set.
    """
    if "instruction" in record:
        user = record["instruction"] + (f"\n\n{record['input']}" if record.get("input") else "")
        return user, record["output"]
    if "label" in record:
        return template.format(text=record["text"], labels=", ".join(labels)), str(record["label"])
    if "prompt" in record:
        return record["prompt"], record["chosen"]
    raise TuneforgeError("records of this dataset cannot be turned into a conversation", where="data.format")


def _normalized(s: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", s.lower()).split())


def parse_label(answer: str, labels: list[str]) -> str | None:
    """The label a generated answer names: the whole answer, or the one label it mentions (None: unclear).

    The inverse of `prompt_and_answer` for classification records (the label is the answer a language model
    learns), shared by evaluation and by the monitor's predicted-label mix.

    A label inside a longer mentioned label ("positive" in "very positive") does not count separately.
    """
    text = _normalized(answer)
    by_norm = {_normalized(label): label for label in labels}
    if text in by_norm:
        return by_norm[text]
    found = [n for n in by_norm if n and re.search(rf"\b{re.escape(n)}\b", text)]
    found = [n for n in found if not any(n != m and n in m for m in found)]
    return by_norm[found[0]] if len(found) == 1 else None
