"""One module per DVC stage: each reads its params, calls library code, writes outputs."""
