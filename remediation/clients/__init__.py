"""Thin adapters for the systems checks read and actions change."""
