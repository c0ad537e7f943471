"""Actions: idempotent side effects, one module per target system."""
