"""Validating records on the slow path: what is wrong, field by field.

The fast path is msgspec decoding straight into a pipeline's ``Struct`` (its constraints
validate as it decodes). When that fails, the document is decoded again generically —
floats as :class:`decimal.Decimal`, so a value no float64 holds (``1e400``) is reported for
its field instead of failing the whole document — and each field is checked on its own,
so an answer names every bad field at once.
"""

from __future__ import annotations

import decimal
import math
from collections.abc import Callable
from dataclasses import dataclass

import msgspec

from orbitstream.core.times import TimeWindow

__all__ = [
    "FieldError",
    "body_errors",
    "clean_message",
    "decode_raw",
    "json_type",
    "number_problem",
]

_RAW = msgspec.json.Decoder(float_hook=decimal.Decimal)


@dataclass(frozen=True, slots=True)
class FieldError:
    """One reason a record was refused: the field (``$`` for the whole document)."""

    field: str
    message: str


def clean_message(message: str) -> str:
    """msgspec's message without its ``- at `$.path``` suffix."""
    cut = message.find(" - at `")
    return message[:cut] if cut >= 0 else message


def decode_raw(body: bytes) -> object:
    """Any JSON document, floats as :class:`decimal.Decimal` (for error reports).

    :raises msgspec.DecodeError: not JSON (also for nesting deeper than the decoder allows).
    """
    try:
        return _RAW.decode(body)
    except RecursionError as exc:
        raise msgspec.DecodeError("JSON nested too deeply") from exc


def json_type(value: object) -> str:
    """The JSON type name of a decoded value."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, str):
        return "str"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return "float" if isinstance(value, float | decimal.Decimal) else "int"


def number_problem(value: object, lo: float | None, hi: float | None) -> str | None:
    """Why ``value`` is not a finite number within ``[lo, hi]`` (``None`` if it is)."""
    if isinstance(value, bool) or not isinstance(value, int | float | decimal.Decimal):
        return f"Expected `float`, got `{json_type(value)}`"
    try:
        number = float(value)
    except OverflowError:
        number = math.inf
    if not math.isfinite(number):
        return "Number out of range: not a finite 64-bit floating point number"
    if lo is not None and number < lo:
        return f"Expected `float` >= {lo:g}"
    if hi is not None and number > hi:
        return f"Expected `float` <= {hi:g}"
    return None


def body_errors(
    body: bytes,
    field_errors: Callable[[object, TimeWindow | None], list[FieldError]],
    window: TimeWindow | None = None,
) -> list[FieldError]:
    """``field_errors`` of a raw body, never raising (a non-JSON body is one ``$`` error)."""
    try:
        return field_errors(decode_raw(body), window)
    except msgspec.DecodeError as exc:
        return [FieldError("$", f"malformed JSON: {exc}")]
