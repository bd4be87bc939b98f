"""Alert events, de-duplicated per (entity, rule): a persisting condition fires once and
clears once. Events become rows of the shared ``alerts`` table and structured log lines.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence

from orbitstream.core.batch import Row
from orbitstream.core.metrics import Metrics
from orbitstream.core.tables import ColType, Column, Table
from orbitstream.detect.thresholds import ThresholdRules

__all__ = ["ALERTS_TABLE", "AlertTracker"]

logger = logging.getLogger(__name__)

ALERTS_TABLE = Table(
    name="alerts",
    columns=(
        Column("time", ColType.TIMESTAMP, codec="DoubleDelta, ZSTD(1)"),
        Column("pipeline", ColType.STRING, low_cardinality=True),
        Column("entity_id", ColType.STRING, low_cardinality=True),
        Column("rule", ColType.STRING, low_cardinality=True),
        Column("state", ColType.STRING, low_cardinality=True, comment="firing | cleared"),
        Column("value", ColType.FLOAT64),
        Column("threshold", ColType.FLOAT64),
        Column("message", ColType.STRING),
    ),
    time_column="time",
    order_by=("entity_id", "rule", "time"),
    entity_column="entity_id",
    comment="Alert events: one 'firing' when a condition starts, one 'cleared' when it ends.",
)

_EMPTY: tuple[str, ...] = ()


class AlertTracker:
    """Remembers which rules are firing per entity and turns changes into alert rows."""

    def __init__(
        self, pipeline: str, rules: ThresholdRules, metrics: Metrics | None = None
    ) -> None:
        self.pipeline = pipeline
        self.rules = rules
        self.metrics = metrics
        self.active: dict[str, tuple[str, ...]] = {}
        # count and log the events of commit(); off where no sink stores them (an HTTP
        # tier publishing raw points: its workers detect, count and log the alerts)
        self.announce = True

    def restore(self, firing: Iterable[tuple[str, str]]) -> None:
        """Seed state from the store (``(entity_id, rule)`` pairs still firing)."""
        by_entity: dict[str, set[str]] = {}
        for entity, rule in firing:
            if rule in self.rules.by_name:
                by_entity.setdefault(entity, set()).add(rule)
        order = [r.rule for r in self.rules.rules]
        for entity, names in by_entity.items():
            self.active[entity] = tuple(r for r in order if r in names)

    def observe(
        self,
        entity: str,
        time_ns: int,
        reasons: tuple[str, ...],
        values: Sequence[float],
        changes: dict[str, tuple[str, ...]],
    ) -> list[Row]:
        """Compare with the entity's previous state; return alert rows for what changed.

        The new state goes into ``changes`` (the tracker itself is unchanged until
        :meth:`commit`), so rows refused downstream (backpressure) change nothing.
        """
        previous = changes.get(entity)
        if previous is None:
            previous = self.active.get(entity, _EMPTY)
        if reasons == previous:
            return []
        events: list[Row] = []
        for idx, rule in enumerate(self.rules.rules):
            was = rule.rule in previous
            now = rule.rule in reasons
            if was == now:
                continue
            state = "firing" if now else "cleared"
            value = float(values[idx])
            message = rule.describe(value) if now else f"{rule.field} back to {value:g}"
            events.append(
                (time_ns, self.pipeline, entity, rule.rule, state, value, rule.threshold, message)
            )
        changes[entity] = reasons
        return events

    def commit(self, changes: dict[str, tuple[str, ...]], events: Iterable[Row]) -> None:
        """Apply the state changes of accepted rows; count and log their alert events."""
        for entity, reasons in changes.items():
            if reasons:
                self.active[entity] = reasons
            else:
                self.active.pop(entity, None)
        if not self.announce:
            return
        for event in events:
            subject, rule, state, value, threshold = event[2:7]
            if self.metrics is not None:
                self.metrics.inc("alerts", (self.pipeline, str(rule), str(state)))
            logger.warning(
                "Anomaly alert fired." if state == "firing" else "Anomaly alert cleared.",
                extra={
                    "pipeline": self.pipeline,
                    "entity_id": subject,
                    "rule": rule,
                    "state": state,
                    "value": value,
                    "threshold": threshold,
                },
            )
