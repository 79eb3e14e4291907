"""The access line's fast encoder writes exactly what json.dumps(..., default=str) writes."""

from __future__ import annotations

import string
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from media_service.observability.logging import _LINE_ENCODER, _encode_line

_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    st.text(),
    st.text(alphabet=string.printable + "\x00\x1f\x7f\u00e9"),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)


@given(st.dictionaries(st.one_of(st.text(max_size=8), st.integers()), _VALUES, max_size=8))
def test_same_text_as_json(line: dict[Any, Any]) -> None:
    assert _encode_line(line) == _LINE_ENCODER.encode(line)


def test_an_access_line() -> None:
    line = {"message": "GET /a,\n  b: c 200", "status": 200, "duration_ms": 0.416, "query": None}
    assert _encode_line(line) == _LINE_ENCODER.encode(line)
