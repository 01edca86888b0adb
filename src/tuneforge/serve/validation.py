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


def may_give_feedback(key_name: str, owner: str | None, *, reviewer: bool = False) -> bool:
    """Feedback on a request comes from the key that made it, or from a reviewer key (on any request)."""
    return reviewer or (owner is not None and key_name == owner)


Correction = str | float | list[str | float | None]


def correction_problem(
    correction: Correction, endpoint: str | None, labels: list[str] | None, inputs: int | None
) -> str | None:
    """Why a correction cannot be right for the request it rates (None: it can).

    Args:
        endpoint: the rated request's endpoint as the log names it ("chat", "completion", "classify").
        labels: the classifier's label set ([] for a regression head); None when its model is not served.
        inputs: how many texts the classify request held (None: unknown).
    """
    if endpoint in ("chat", "completion"):
        if not isinstance(correction, str) or not correction.strip():
            return "correction: a corrected answer is its text (a non-empty string)"
        return None
    if endpoint != "classify":
        return f"correction: a {endpoint or 'refused'} request has no answer to correct"
    if labels is None:
        return "correction: the model that answered is not served now, so its labels cannot be checked"
    items = correction if isinstance(correction, list) else [correction]
    if isinstance(correction, list):
        if inputs is not None and len(items) != inputs:
            return f"correction: the request classified {inputs} inputs; send one correction per input"
        if all(x is None for x in items):
            return "correction: the list corrects nothing (every item is null)"
    elif inputs is not None and inputs != 1:
        return f"correction: the request classified {inputs} inputs; send a list with one item per input"
    for item in items:
        if item is None:
            continue
        if labels and (not isinstance(item, str) or item not in labels):
            return f"correction: {item!r} is not one of the model's labels: {', '.join(map(repr, labels))}"
        if not labels and not isinstance(item, int | float):
            return f"correction: the model predicts a number, so a corrected value is a number, not {item!r}"
    return None
