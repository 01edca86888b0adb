"""Every cleaning step: what it changes, what it leaves alone, that it can be switched off, and its count."""

from __future__ import annotations

from typing import Any

import pytest

from tuneforge.config import CleanConfig
from tuneforge.data.clean import Cleaner, normalize_label

OFF = {"unicode_nfc": False, "fix_mojibake": False, "whitespace": False, "strip_html": False}


def clean(text: str, **cfg: Any) -> tuple[str, set[str]]:
    changed: set[str] = set()
    return Cleaner(CleanConfig(**{**OFF, **cfg})).text(text, changed), changed


def test_mojibake_is_repaired_only_where_ftfy_is_sure() -> None:
    assert clean("cafÃ© â€œquotedâ€\x9d", fix_mojibake=True) == ("café “quoted”", {"fix_mojibake"})
    assert clean("naïve café, ½ price", fix_mojibake=True) == ("naïve café, ½ price", set())
    # Entities and quotes are not this step's business (ftfy's fix_text would change them).
    assert clean("&amp; “curly”", fix_mojibake=True) == ("&amp; “curly”", set())
    assert clean("cafÃ©", fix_mojibake=False) == ("cafÃ©", set())


def test_unicode_nfc_composes_characters() -> None:
    decomposed = "cafe\u0301"
    assert clean(decomposed, unicode_nfc=True) == ("caf\u00e9", {"unicode_nfc"})
    assert clean(decomposed, unicode_nfc=False) == (decomposed, set())


def test_whitespace_and_control_characters() -> None:
    text = "  a\u00a0\u00a0b\t\tc\x07d\u200be \r\n\r\n\r\n\r\nsecond  line \x00"
    assert clean(text, whitespace=True) == ("a b cde\n\nsecond line", {"whitespace"})
    # Zero-width joiners hold emoji sequences together: they stay.
    family = "\U0001f468\u200d\U0001f469\u200d\U0001f467"
    assert clean(f"{family}  ok", whitespace=True) == (f"{family} ok", {"whitespace"})
    assert clean("  a  b ", whitespace=False) == ("  a  b ", set())


def test_html_tags_scripts_and_entities_are_stripped_but_lookalikes_are_not() -> None:
    page = "<p>Hello <b>world</b> &amp; friends</p><script>track()</script><style>p{}</style>"
    assert clean(page, strip_html=True, whitespace=True) == (
        "Hello world & friends",
        {"strip_html", "whitespace"},
    )
    assert clean("caf&eacute; &#8364;5", strip_html=True) == ("café €5", {"strip_html"})
    assert clean("I <3 you, a < b > c", strip_html=True) == ("I <3 you, a < b > c", set())
    assert clean("<b>x</b>", strip_html=False) == ("<b>x</b>", set())


@pytest.mark.parametrize(
    ("kind", "text", "expected"),
    [
        ("email", "write to jane.doe+x@mail.example.co.uk!", "write to <EMAIL>!"),
        ("email", "not@an-address and a@b", "not@an-address and a@b"),
        ("url", "see https://x.org/a?b=1. or www.shop.com)", "see <URL>. or <URL>)"),
        ("ip", "from 192.168.0.1 and 2001:db8::8a2e:370:7334", "from <IP> and <IP>"),
        ("ip", "999.1.1.1 at 10:30:00", "999.1.1.1 at 10:30:00"),
        ("credit_card", "card 4111 1111 1111 1111 ok", "card <CREDIT_CARD> ok"),
        ("credit_card", "order 1234567890123 ok", "order 1234567890123 ok"),  # fails the Luhn check
        ("phone", "call +1 (555) 123-4567 or 030 1234567", "call <PHONE> or <PHONE>"),
        (
            "phone",
            "on 2024-01-15, 3,000,000 people, 1.234.567,00",
            "on 2024-01-15, 3,000,000 people, 1.234.567,00",
        ),
    ],
)
def test_pii_redaction(kind: str, text: str, expected: str) -> None:
    out, changed = clean(text, redact_pii=[kind])
    assert out == expected
    assert changed == ({f"redact_{kind}"} if out != text else set())


def test_pii_kinds_run_in_a_fixed_order_whatever_the_config_order() -> None:
    text = "mail bob@site.org or visit http://10.0.0.1/login"
    for kinds in (["ip", "url", "email"], ["email", "url", "ip"]):
        assert clean(text, redact_pii=kinds)[0] == "mail <EMAIL> or visit <URL>"


def test_labels_are_stripped_lowercased_and_mapped() -> None:
    cfg = CleanConfig(label_map={"Pos": "positive", "neg": "negative"})
    assert normalize_label("  Very   Positive ", cfg) == "very positive"
    assert normalize_label("POS", cfg) == "positive"
    assert normalize_label(" neg", cfg) == "negative"
    keep_case = CleanConfig(lowercase_labels=False, label_map={"Pos": "Positive"})
    assert normalize_label(" Pos ", keep_case) == "Positive"
    assert normalize_label("pos", keep_case) == "pos"


def test_a_row_counts_once_per_step_however_many_fields_changed() -> None:
    cleaner = Cleaner(CleanConfig(strip_html=True))
    rec = cleaner.record({"instruction": " a  b ", "input": "<i>x</i>", "output": "c\t d", "label": None})
    assert rec == {"instruction": "a b", "input": "x", "output": "c d", "label": None}
    cleaner.record(
        {"messages": [{"role": "user", "content": " hi "}, {"role": "assistant", "content": "yo"}]}
    )
    cleaner.record({"text": "fine", "label": " Positive"})
    assert dict(cleaner.counts) == {"whitespace": 2, "strip_html": 1, "label_normalized": 1}


def test_all_steps_off_leave_a_record_as_it_is() -> None:
    cleaner = Cleaner(CleanConfig(**OFF, lowercase_labels=False))
    rec = {"text": "  <b>cafÃ©</b>\x07 ", "label": "Pos"}
    assert cleaner.record(rec) == rec
    assert not cleaner.counts


def test_missing_text_is_filled_only_when_asked_and_labels_never() -> None:
    mapping = {"text": "body", "label": "y"}
    fill = Cleaner(CleanConfig(missing="fill", fill_value="(empty)"))
    assert fill.fill_missing({"body": None, "y": None}, mapping) == {"body": "(empty)", "y": None}
    assert fill.fill_missing({"body": float("nan"), "y": "a"}, mapping) == {"body": "(empty)", "y": "a"}
    assert fill.fill_missing({"body": "ok", "y": "a"}, mapping) == {"body": "ok", "y": "a"}
    assert dict(fill.counts) == {"filled_missing": 2}
    drop = Cleaner(CleanConfig(missing="drop"))
    assert drop.fill_missing({"body": None, "y": "a"}, mapping) == {"body": None, "y": "a"}
