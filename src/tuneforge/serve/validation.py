"""Checks on request text and ids that the request schemas and routes share.

A lone surrogate (`"\\ud800"` is valid JSON) is not Unicode: no tokenizer, log or database can take it, so it
is refused where the body is validated (a 422 naming the field) instead of failing deep inside a request.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator

INTERNAL_PREFIX = "err-"
"""Ids of refused requests: logged, but no answer anyone could give feedback on."""


def _unicode(text: str) -> str:
    if any("\ud800" <= ch <= "\udfff" for ch in text):
        raise ValueError(
            "the text holds a lone surrogate, which is not Unicode (send UTF-8 or paired \\u escapes)"
        )
    return text


Text = Annotated[str, AfterValidator(_unicode)]
"""Any request string: Unicode (NUL, right-to-left marks and the like are text like any other)."""


def stop_strings(stop: str | list[str] | None) -> list[str]:
    """The stop strings that can stop anything: an empty one matches everywhere, so it is ignored."""
    given = [stop] if isinstance(stop, str) else list(stop or [])
    return [s for s in given if s]


def answer_id(request_id: str) -> bool:
    """Whether an id can name an answer (feedback is on answers, never on refused requests)."""
    return not request_id.startswith(INTERNAL_PREFIX)


def may_give_feedback(key_name: str, owner: str | None) -> bool:
    """Feedback on a request comes from the key that made it (reviewer keys would be allowed here too)."""
    return owner is not None and key_name == owner
