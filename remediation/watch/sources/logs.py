"""Placeholder replaced by the log-tail source (being written)."""
