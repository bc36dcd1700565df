"""Benchmarks of fedcoord (plain scripts, not tests): ``python -m bench.<name> --help``.

Each prints one JSON object on stdout (parameters, environment, figures, target with pass/fail)
and a short human-readable table on stderr.
"""
