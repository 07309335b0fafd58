"""The ClickHouse store."""
