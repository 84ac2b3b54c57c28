"""Tests of serving/: the BentoML service, its preprocessing and batching."""
