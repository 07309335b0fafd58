"""The Kafka bus."""
