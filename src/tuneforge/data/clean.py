"""Cleaning steps, each switchable in `data.clean` and counted for the report."""

from __future__ import annotations

import html
import re
import unicodedata
from collections import Counter
from typing import Any

from tuneforge.config import CleanConfig

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_SPACES = re.compile(r"[ \t\u00a0]+")
_TAGS = re.compile(r"<[^>]+>")
PII_PATTERNS: dict[str, tuple[re.Pattern[str], str]] = {
    "email": (re.compile(r"\b[\w.+-]+@[\w-]+\.[\w.-]+\b"), "<EMAIL>"),
    "url": (re.compile(r"\bhttps?://\S+|\bwww\.\S+"), "<URL>"),
    "ip": (re.compile(r"\b(?:\d{1,3}\.){3}\d{1,3}\b"), "<IP>"),
    "credit_card": (re.compile(r"\b(?:\d[ -]?){13,19}\b"), "<CREDIT_CARD>"),
    "phone": (re.compile(r"(?<!\w)\+?\d[\d ().-]{7,}\d\b"), "<PHONE>"),
}


def clean_text(text: str, cfg: CleanConfig, counts: Counter[str]) -> str:
    """Apply the enabled steps to one text; `counts[step]` grows for every text a step changed."""
    steps: list[tuple[str, Any]] = []
    if cfg.fix_mojibake:
        steps.append(("fix_mojibake", _fix_mojibake))
    if cfg.unicode_nfc:
        steps.append(("unicode_nfc", lambda t: unicodedata.normalize("NFC", t)))
    if cfg.strip_html:
        steps.append(("strip_html", lambda t: html.unescape(_TAGS.sub(" ", t))))
    for kind in cfg.redact_pii:
        pattern, token = PII_PATTERNS[kind]
        steps.append((f"redact_{kind}", lambda t, p=pattern, tok=token: p.sub(tok, t)))
    if cfg.whitespace:
        steps.append(("whitespace", _whitespace))
    for name, step in steps:
        new = step(text)
        if new != text:
            counts[name] += 1
            text = new
    return text


def _fix_mojibake(text: str) -> str:
    import ftfy  # ftfy only changes text it is confident was mis-decoded, which is what "where safe" needs

    return str(ftfy.fix_text(text, normalization="NFC", fix_line_breaks=False, uncurl_quotes=False))


def _whitespace(text: str) -> str:
    text = _CONTROL.sub("", text).replace("\r\n", "\n").replace("\r", "\n")
    lines = [_SPACES.sub(" ", line).strip() for line in text.split("\n")]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def normalize_label(label: str, cfg: CleanConfig) -> str:
    out = label.strip()
    if cfg.lowercase_labels:
        out = out.lower()
    return cfg.label_map.get(out, out)


def clean_record(record: dict[str, Any], cfg: CleanConfig, counts: Counter[str]) -> dict[str, Any]:
    """Clean every text field of a record (roles and numbers stay as they are)."""
    out = dict(record)
    for key in ("text", "instruction", "input", "output", "prompt", "chosen", "rejected"):
        if isinstance(out.get(key), str):
            out[key] = clean_text(out[key], cfg, counts)
    if "messages" in out:
        out["messages"] = [{**m, "content": clean_text(m["content"], cfg, counts)} for m in out["messages"]]
    if isinstance(out.get("label"), str):
        new = normalize_label(out["label"], cfg)
        if new != out["label"]:
            counts["label_normalized"] += 1
        out["label"] = new
    return out
