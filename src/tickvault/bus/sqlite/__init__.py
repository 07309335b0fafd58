"""The embedded SQLite bus."""
