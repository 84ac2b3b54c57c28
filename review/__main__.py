"""`python -m review`: see review/report.py."""

from review.report import cli_main

cli_main()
