"""Property-based tests: hypothesis-generated kwargs for every remediation.act.* task."""
