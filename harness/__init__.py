"""What tests, benchmarks and the studies share: a copy of the project in a temporary
folder, the MNIST mirror, a real `bentoml serve`, fault scenarios, malformed requests and
the report pages."""
