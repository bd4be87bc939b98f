"""Query results shared by every queryable store (chDB, ClickHouse server, PostgreSQL)."""

from __future__ import annotations

import json
from dataclasses import dataclass

from orbitstream.errors import QueryError

__all__ = ["QueryError", "Rows"]


@dataclass(slots=True)
class Rows:
    """A query result: column names, ClickHouse types and rows."""

    columns: list[str]
    types: list[str]
    rows: list[tuple[object, ...]]

    @classmethod
    def from_json_compact(cls, raw: bytes) -> Rows:
        """Parse ClickHouse ``FORMAT JSONCompact`` output (empty for statements)."""
        if not raw.strip():
            return cls([], [], [])
        doc = json.loads(raw)
        meta = doc.get("meta", [])
        return cls(
            [m["name"] for m in meta],
            [m["type"] for m in meta],
            [tuple(r) for r in doc.get("data", [])],
        )

    def dicts(self) -> list[dict[str, object]]:
        return [dict(zip(self.columns, r, strict=True)) for r in self.rows]
