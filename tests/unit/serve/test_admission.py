"""An admitted request's place is given back exactly once: at the end of its block, or of its stream."""

from __future__ import annotations

import pytest

from tuneforge.serve.limits import Admission
from tuneforge.serve.protocol import APIError


def test_a_place_is_released_when_its_block_ends_even_on_error() -> None:
    admission = Admission(max_queue=1, per_key=1)
    with pytest.raises(APIError, match="boom"), admission.admit("alice"):
        assert (admission.total, admission.by_key["alice"]) == (1, 1)
        raise APIError(400, "boom", code="x")
    assert (admission.total, admission.by_key["alice"]) == (0, 0)


def test_a_place_passed_on_is_held_until_released_once() -> None:
    admission = Admission(max_queue=1, per_key=1)
    with admission.admit("alice") as place:
        kept = place.pass_on()
    with pytest.raises(APIError, match="busy"):
        admission.admit("bob")
    kept.release()
    kept.release()
    assert (admission.total, admission.by_key["alice"]) == (0, 0)
