"""Placeholder replaced by the Celery events source (being written)."""
