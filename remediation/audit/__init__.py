"""Append-only audit trail in PostgreSQL: check run -> finding -> decision -> action -> verify."""
