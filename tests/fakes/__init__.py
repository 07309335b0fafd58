"""Fake venue servers speaking the venues' real wire formats on loopback (no network)."""
