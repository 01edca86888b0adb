"""Cleaning steps, each switchable in `data.clean` and counted (rows changed per step) for the report."""

from __future__ import annotations

import html
import ipaddress
import math
import re
import unicodedata
from collections import Counter
from collections.abc import Callable
from typing import Any

from tuneforge.config import CleanConfig

TEXT_FIELDS = ("text", "instruction", "input", "output", "prompt", "chosen", "rejected")

# C0/C1 control characters except tab and newline (\r is turned into \n first), plus the invisible characters
# that break tokenization and matching: zero-width space, word joiner, BOM. ZWJ/ZWNJ stay: emoji and scripts
# such as Persian need them.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u200b\u2060\ufeff]")
_SPACES = re.compile(r"[^\S\n]+")
_BLANK_LINES = re.compile(r"\n{3,}")
# Cheap guard so BeautifulSoup (slow) only sees texts that can hold markup; "I <3 you" and "a < b" do not.
_MARKUP = re.compile(r"<[A-Za-z!/?]|&(?:#\d+|#x[0-9a-fA-F]+|[A-Za-z]+\d*);")
_TAG_LIKE = re.compile(r"<[A-Za-z!/?]")

Step = Callable[[str], str]


def _fix_mojibake(text: str) -> str:
    if text.isascii():  # ASCII cannot be mis-decoded UTF-8; skipping it keeps the common case fast
        return text
    import ftfy

    # `fix_encoding` only undoes wrong decodings, and only where ftfy is confident: "where safe". `fix_text`
    # would also unescape HTML and change quotes, which belong to other steps (or to nobody).
    return str(ftfy.fix_encoding(text))


def _nfc(text: str) -> str:
    return text if text.isascii() else unicodedata.normalize("NFC", text)


def _strip_html(text: str) -> str:
    if not _MARKUP.search(text):
        return text
    if not _TAG_LIKE.search(text):
        return html.unescape(text)
    from bs4 import BeautifulSoup

    # html.parser tolerates broken markup; get_text leaves out <script>/<style> bodies and decodes entities.
    return str(BeautifulSoup(text, "html.parser").get_text(" "))


def _whitespace(text: str) -> str:
    text = _CONTROL.sub("", text.replace("\r\n", "\n").replace("\r", "\n"))
    if "\n" not in text:
        return _SPACES.sub(" ", text).strip()
    lines = [_SPACES.sub(" ", line).strip() for line in text.split("\n")]
    return _BLANK_LINES.sub("\n\n", "\n".join(lines)).strip()


# --- PII: regexes find candidates, callbacks reject look-alikes (order numbers, dates, version strings).

_EMAIL = re.compile(r"(?<![\w.+-])[\w.+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b")
_URL = re.compile(r"\b(?:https?|ftp)://[^\s<>\"']+|\bwww\.[^\s<>\"']+", re.IGNORECASE)
_IPV4 = re.compile(r"(?<![\w.])(?:\d{1,3}\.){3}\d{1,3}(?![\w.]*\w)")
_IPV6 = re.compile(r"(?<![\w:])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}(?![\w:])")
_CARD = re.compile(r"(?<![\w-])\d(?:[ -]?\d){12,18}(?![\w-])")
_PHONE = re.compile(r"(?<![\w+])(?:\+|00)?\d[\d ().-]{5,}\d(?!\w)|\(\d{2,5}\)[\d .-]{5,}\d(?!\w)")
_DATE = re.compile(r"\d{4}[-./]\d{1,2}[-./]\d{1,2}|\d{1,2}[-./]\d{1,2}[-./]\d{2,4}")
_URL_TRAILING = ".,;:!?)]}'\""


def _luhn(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _redact_email(text: str) -> str:
    return _EMAIL.sub("<EMAIL>", text) if "@" in text else text


def _redact_url(text: str) -> str:
    def sub(m: re.Match[str]) -> str:
        url = m.group(0)
        trail = len(url) - len(url.rstrip(_URL_TRAILING))  # "see www.x.org." keeps its full stop
        return "<URL>" + url[len(url) - trail :] if trail else "<URL>"

    return _URL.sub(sub, text)


def _redact_ip(text: str) -> str:
    def sub(m: re.Match[str]) -> str:
        try:
            ipaddress.ip_address(m.group(0))
        except ValueError:  # 999.1.2.3, a version string, a time such as 10:30:00
            return m.group(0)
        return "<IP>"

    if "." in text:
        text = _IPV4.sub(sub, text)
    if text.count(":") >= 2:
        text = _IPV6.sub(sub, text)
    return text


def _redact_card(text: str) -> str:
    def sub(m: re.Match[str]) -> str:
        digits = re.sub(r"\D", "", m.group(0))
        return "<CREDIT_CARD>" if 13 <= len(digits) <= 19 and _luhn(digits) else m.group(0)

    return _CARD.sub(sub, text)


def _redact_phone(text: str) -> str:
    def sub(m: re.Match[str]) -> str:
        s = m.group(0)
        digits = sum(ch.isdigit() for ch in s)
        # 7-15 digits (E.164 allows at most 15); dates and plain decimals such as 1.234.567,00 are not phones.
        if not 7 <= digits <= 15 or _DATE.fullmatch(s.strip()) or re.fullmatch(r"[\d.,]+", s):
            return s
        return "<PHONE>"

    return _PHONE.sub(sub, text)


# Applied in this order whatever the order in the config: an e-mail inside a URL, or an IP inside a URL, is
# replaced once by the more specific token.
PII_STEPS: dict[str, Step] = {
    "email": _redact_email,
    "url": _redact_url,
    "ip": _redact_ip,
    "credit_card": _redact_card,
    "phone": _redact_phone,
}
PII_TOKENS = {
    "email": "<EMAIL>",
    "url": "<URL>",
    "ip": "<IP>",
    "credit_card": "<CREDIT_CARD>",
    "phone": "<PHONE>",
}


def text_steps(cfg: CleanConfig) -> list[tuple[str, Step]]:
    """The enabled text steps in the order they run: encoding first, whitespace last."""
    steps: list[tuple[str, Step]] = []
    if cfg.fix_mojibake:
        steps.append(("fix_mojibake", _fix_mojibake))
    if cfg.unicode_nfc:
        steps.append(("unicode_nfc", _nfc))
    if cfg.strip_html:
        steps.append(("strip_html", _strip_html))
    steps += [(f"redact_{kind}", step) for kind, step in PII_STEPS.items() if kind in cfg.redact_pii]
    if cfg.whitespace:
        steps.append(("whitespace", _whitespace))
    return steps


def normalize_label(label: str, cfg: CleanConfig) -> str:
    """Strip and collapse whitespace, lowercase (if enabled), then map synonyms onto canonical labels."""
    out = " ".join(label.split())
    if cfg.lowercase_labels:
        out = out.lower()
    mapped = cfg.label_map.get(out)
    if mapped is None and cfg.lowercase_labels:
        # Synonym keys written as "Pos" in the config still match the lowercased label "pos".
        mapped = next((v for k, v in cfg.label_map.items() if k.lower() == out), None)
    return mapped if mapped is not None else out


def is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or value == ""


class Cleaner:
    """The enabled steps of a `CleanConfig`, built once and applied to many records."""

    def __init__(self, cfg: CleanConfig) -> None:
        self.cfg = cfg
        self.steps = text_steps(cfg)
        self.counts: Counter[str] = Counter()
        """Rows changed by each step (a row counts once per step, however many of its fields changed)."""

    def text(self, text: str, changed: set[str]) -> str:
        for name, step in self.steps:
            new = step(text)
            if new != text:
                changed.add(name)
                text = new
        return text

    def record(self, record: dict[str, Any]) -> dict[str, Any]:
        """Clean every text field of a record (roles and numbers stay as they are)."""
        changed: set[str] = set()
        out = dict(record)
        for key in TEXT_FIELDS:
            if isinstance(out.get(key), str):
                out[key] = self.text(out[key], changed)
        if "messages" in out:
            out["messages"] = [{**m, "content": self.text(m["content"], changed)} for m in out["messages"]]
        if isinstance(out.get("label"), str):
            new = normalize_label(out["label"], self.cfg)
            if new != out["label"]:
                changed.add("label_normalized")
            out["label"] = new
        self.counts.update(changed)
        return out

    def fill_missing(self, fields: dict[str, Any], mapping: dict[str, str]) -> dict[str, Any]:
        """With `clean.missing: fill`, put `fill_value` into missing text columns (never into labels)."""
        if self.cfg.missing != "fill":
            return fields
        cols = [col for field, col in mapping.items() if field in TEXT_FIELDS and field != "input"]
        missing = [c for c in cols if is_missing(fields.get(c))]
        if not missing:
            return fields
        self.counts["filled_missing"] += 1
        return {**fields, **dict.fromkeys(missing, self.cfg.fill_value)}


def clean_record(record: dict[str, Any], cfg: CleanConfig, counts: Counter[str]) -> dict[str, Any]:
    """Clean one record with a throwaway `Cleaner` (for callers outside the pipeline)."""
    cleaner = Cleaner(cfg)
    out = cleaner.record(record)
    counts.update(cleaner.counts)
    return out
