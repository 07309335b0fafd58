"""Position state that restores safely (see docs/positions.md)."""
