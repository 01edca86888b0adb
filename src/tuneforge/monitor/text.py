"""Three text measures the report needs: a prompt's script, its language, and whether an answer refuses.

The script is hand-written because no library does it more simply: `unicodedata.name` already carries each
letter's script as the first word of its name. The language is py3langid's (BSD-3-Clause, a fork of
langid.py with its model inside the wheel: offline, numpy only, ~0.2 ms a prompt, 97 languages) rather than
lingua-language-detector, whose models are ~100 MB, or langdetect, which is unmaintained and not
deterministic without a global seed. Script and language answer different questions: German prompts to an
English model keep the Latin script, and only the language mix shows them.

"""

from __future__ import annotations

import functools
import unicodedata
from collections import Counter
from typing import Any

from tuneforge.data.records import parse_label

SCRIPTS = {"HIRAGANA": "Japanese kana", "KATAKANA": "Japanese kana", "CJK": "CJK (Han)", "HANGUL": "Hangul"}
"""Names whose first word is not the script's usual name; every other script is its name's first word."""

REFUSALS: dict[str, tuple[str, ...]] = {
    "en": (
        "i can't",
        "i cannot",
        "i can not",
        "i'm not able to",
        "i am not able to",
        "i'm unable to",
        "i am unable to",
        "i won't",
        "i will not",
        "sorry, i can",
        "i'm sorry, but",
        "i am sorry, but",
        "as an ai",
        "as a language model",
        "i apologize, but",
    ),
    "de": (
        "ich kann nicht",
        "ich kann dir nicht",
        "ich kann ihnen nicht",
        "das kann ich nicht",
        "ich bin nicht in der lage",
        "ich werde nicht",
        "leider kann ich",
        "es tut mir leid, aber",
        "entschuldigung, aber",
        "als ki",
        "als sprachmodell",
    ),
    "fr": (
        "je ne peux pas",
        "je ne suis pas en mesure",
        "je ne vais pas",
        "désolé, mais",
        "désolée, mais",
        "je suis désolé, mais",
        "je suis désolée, mais",
        "malheureusement, je ne peux",
        "en tant qu'ia",
        "en tant que modèle de langage",
    ),
    "es": (
        "no puedo",
        "no estoy en condiciones",
        "no me es posible",
        "lo siento, pero",
        "lo siento, no puedo",
        "lamentablemente, no puedo",
        "como ia",
        "como modelo de lenguaje",
    ),
}
"""Openings of a refusal per language, lower-cased, with straight apostrophes. Adding a language is one
entry: a model answers in its user's language, so a refusal in any of them counts (no per-answer language
guess is needed, and an English refusal inside a German deployment is still one)."""
_OPENINGS = tuple(o for openings in REFUSALS.values() for o in openings)


def script_of(text: str) -> str:
    """The script most of the text's letters are written in ("none" when it has no letters)."""
    counts: Counter[str] = Counter()
    for ch in text:
        if ch.isalpha():
            first = unicodedata.name(ch, "UNKNOWN").split(" ", 1)[0]
            counts[SCRIPTS.get(first, first.title())] += 1
    return counts.most_common(1)[0][0] if counts else "none"


def script_mix(texts: list[str]) -> Counter[str]:
    """How many texts are written mostly in each script."""
    return Counter(script_of(t) for t in texts)


UNDETERMINED = "und"
"""The language of a text py3langid is not sure of (ISO 639-2's code for "undetermined")."""
MIN_CONFIDENCE = 0.3
"""Below this probability of its best language a text is undetermined: "ok" or "thx" name no language.

Measured on 3,000 English tweets of the demo data: of the texts named a language at 0.1-0.3, one in five was
named wrongly (Pidgin, Sesotho, Latin for "cancel subscription", ...), at 0.3-0.5 one in thirty-five; a
wrong language in the mix reads as drift, an "und" does not.
"""


@functools.cache
def _identifier() -> Any:
    # Loaded once per process (decompressing the model takes a second or two), only when a report needs it.
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    return LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True, min_confidence=MIN_CONFIDENCE)


def language_of(text: str) -> str:
    """The text's language as an ISO 639-1 code ("und" when unsure, "none" when it has no letters)."""
    if not any(ch.isalpha() for ch in text):
        return "none"
    return str(_identifier().classify(text)[0])


def language_mix(texts: list[str]) -> Counter[str]:
    """How many texts are in each language."""
    return Counter(language_of(t) for t in texts)


def is_refusal(answer: str) -> bool:
    """Whether an answer opens like a refusal.

    A heuristic: fixed openings in English, German, French and Spanish (`REFUSALS`), checked only at the
    start of the answer (a refusal quoted later in a helpful answer is not one). It misses other languages
    and phrasings and can flag an answer that starts with "I cannot stress enough" or "No puedo esperar";
    it is a rate to watch move, not a classifier.
    """
    start = answer.lstrip().lower().replace("\u2019", "'")[:64]
    return start.startswith(_OPENINGS)


NO_LABEL = "(no label)"
"""The bucket of answers that name no label, or several: a generative classifier drifting off its labels."""


def answered_labels(answers: list[str], labels: list[str]) -> Counter[str]:
    """The labels a sample of generated answers names (data.records.parse_label, as evaluation reads them)."""
    return Counter(parse_label(a, labels) or NO_LABEL for a in answers)
