"""Sources: venue collectors, replay of recordings, synthetic data."""
