"""The R1-R5 reproduction study: `make reproduce` writes docs/reproduction.md."""
