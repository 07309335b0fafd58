"""Polygon: historical aggregates over REST."""
