"""make report: a change reviewed against a base (review/report.py)."""
