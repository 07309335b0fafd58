"""Delivery machinery: publisher, failover, spool, breaker, checkpoints, writer,
consumer, upkeep."""
