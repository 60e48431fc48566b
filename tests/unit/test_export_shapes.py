"""The decimal widths `scripts.export` measures on PostgreSQL's NUMERIC text, without the database."""

from __future__ import annotations

from decimal import Decimal

import pyarrow as pa
import pytest

from scripts.export import DecimalShape

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    "texts, digits, scale",
    [
        (["7"], 1, 0),
        (["0.5", "-0.25"], 1, 2),
        (["-12.345", "7"], 2, 3),
        (["1.500"], 1, 3),  # trailing zeros count: the scale PostgreSQL keeps
        (["123456.0", "0.00000001"], 6, 8),
        (["-99999999999999999999.1"], 20, 1),
        (["0"], 1, 0),
    ],
)
def test_a_shape_holds_every_value_exactly_and_no_more(texts, digits, scale):
    shape = DecimalShape()
    own = shape.widen(pa.array(texts))
    assert (own.integer_digits, own.scale) == (shape.integer_digits, shape.scale) == (digits, scale)
    as_decimals = pa.array(texts).cast(pa.decimal128(shape.precision, shape.scale))
    assert as_decimals.to_pylist() == [Decimal(t) for t in texts]
    if any("." in t and len(t.split(".")[1]) == scale and not t.endswith("0") for t in texts):
        with pytest.raises(pa.ArrowInvalid):
            pa.array(texts).cast(pa.decimal128(shape.precision, shape.scale - 1))  # one decimal short


def test_widening_keeps_the_largest_of_each_part():
    shape = DecimalShape()
    shape.widen(pa.array(["1234.5"]))
    own = shape.widen(pa.array(["0.000001"]))
    assert (own.integer_digits, own.scale) == (1, 6)
    assert (shape.integer_digits, shape.scale, shape.precision) == (4, 6, 10)
    assert shape.widen(pa.array([], pa.string())) == DecimalShape()
