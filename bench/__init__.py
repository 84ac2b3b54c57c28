"""Speed benchmarks that print figures: `make bench` writes docs/performance.md."""
