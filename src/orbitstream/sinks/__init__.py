"""Sinks: chDB (embedded, default), ClickHouse server, PostgreSQL, and test doubles."""
