"""Binance: the live collector, its wire formats, book, gaps, dumps."""
