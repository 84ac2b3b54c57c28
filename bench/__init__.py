"""Benchmarks that print figures (see ``make bench`` and ``python -m bench.reproduce``)."""
