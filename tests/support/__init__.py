"""Test and benchmark harness, kept out of the product: the MNIST mirror, a stand-in
model, and a real `bentoml serve` started on 127.0.0.1."""
