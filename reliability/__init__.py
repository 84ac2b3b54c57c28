"""The reliability suite: `make chaos` kills stages, loads and attacks the service, and
writes docs/reliability.md."""
