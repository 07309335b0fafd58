"""The Redis Streams bus."""
