"""Checks: read one signal source, return findings, change nothing."""
