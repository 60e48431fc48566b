"""Shared building blocks: settings, candle types, database access, Redis key names, time helpers."""
