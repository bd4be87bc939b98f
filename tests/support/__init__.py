"""Test support: local stand-ins for servers (ClickHouse HTTP front over chDB, PostgreSQL clusters)."""
