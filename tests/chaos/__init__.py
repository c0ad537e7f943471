"""Chaos tests: real processes killed, restarted and cut off, then the counts checked.

`make test` runs them in a bounded form; `make chaos` sets REMEDIATION_CHAOS_FULL=1 for the
full form (at least 50 kills, 200+ schedule slots, 1,000 fuzz cases per action).
"""
