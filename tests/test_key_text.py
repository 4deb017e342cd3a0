"""Key columns as large text: what pyarrow's own cast gives, for every slice, null and empty value."""

from __future__ import annotations

import pyarrow as pa
import pytest

from streamfilter.keys import as_bytes, as_text

VALUES = ["a", None, "", "xyz", "é😀", None, "a longer key, https://img.example/x.jpg", ""]


@pytest.mark.parametrize("kind", [pa.string(), pa.binary()])
def test_string_and_binary_widen_as_a_cast_would(kind: pa.DataType) -> None:
    large = pa.large_string() if kind == pa.string() else pa.large_binary()
    values = [v if v is None or kind == pa.string() else v.encode() for v in VALUES] * 3
    array = pa.array(values, kind)
    pieces = (array, array.slice(1), array.slice(5, 9), array.slice(3, 1), array.slice(0, 0), array.slice(len(array)))
    for piece in pieces:
        got = as_text(piece)
        got.validate(full=True)
        assert got.type == large
        assert got.equals(piece.cast(large))
        assert as_bytes(piece).equals(piece.cast(large).cast(pa.large_binary()))
    only_empty = pa.array(["", None, ""], kind)
    assert as_text(only_empty).equals(only_empty.cast(large))
    chunked = pa.chunked_array([array.slice(0, 4), array.slice(4)])
    assert as_text(chunked).equals(array.cast(large))
