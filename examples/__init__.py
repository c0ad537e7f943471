"""Profiles: one folder per runbook system (README "Profiles"); importable as examples.<x>."""
