"""Threshold rules: a field compared with a configured limit."""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from dataclasses import field as dc_field
from typing import Literal

__all__ = ["ThresholdRule", "ThresholdRules"]

_OPS: dict[str, Callable[[float, float], bool]] = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}


@dataclass(frozen=True, slots=True)
class ThresholdRule:
    """``rule`` fires when ``value <op> threshold``.

    :param field: the record field the rule reads.
    :param rule: the reason name stored in ``anomaly_reasons`` and ``alerts.rule``.
    """

    field: str
    op: Literal["<", "<=", ">", ">="]
    threshold: float
    rule: str
    check: Callable[[float, float], bool] = dc_field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "check", _OPS[self.op])

    def fires(self, value: float) -> bool:
        return self.check(value, self.threshold)

    def describe(self, value: float) -> str:
        return f"{self.field} {value:g} {self.op} {self.threshold:g}"


class ThresholdRules:
    """An ordered set of rules evaluated together; reasons come back in rule order."""

    def __init__(self, rules: Sequence[ThresholdRule]) -> None:
        self.rules = tuple(rules)
        self.by_name = {r.rule: r for r in self.rules}

    def reasons(self, values: Sequence[float]) -> tuple[str, ...]:
        """``values`` are in rule order; returns the names of the rules that fire."""
        out: tuple[str, ...] = ()
        for rule, value in zip(self.rules, values, strict=True):
            if rule.check(value, rule.threshold):
                out += (rule.rule,)
        return out
