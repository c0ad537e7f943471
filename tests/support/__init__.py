"""Helpers shared by the tests and benchmarks (never shipped: the package is remediation/).

One place for what more than one test module needs: real service processes (services,
processes, http_doubles), the environment tests point them at (env), and plain helpers
by topic. Fixtures stay in conftest.py files; test modules import helpers only from here.
"""
