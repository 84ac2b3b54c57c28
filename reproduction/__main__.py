"""`python -m reproduction`: see reproduction/study.py."""

from reproduction.study import cli_main

cli_main()
