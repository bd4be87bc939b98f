"""Backends for the compliance suite that need servers (PostgreSQL, ClickHouse front)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

EXTRA: dict[str, Callable[[Path], AsyncIterator[Any]]] = {}
