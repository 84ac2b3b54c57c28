"""MNIST MLOps pipeline: one module per DVC stage plus small shared modules."""
