"""`make demo`: the price-monitoring scraper of runbook 001 in miniature, watched by the real
remediator, with a fault injector (`python -m demo`, README "Try it: make demo")."""
