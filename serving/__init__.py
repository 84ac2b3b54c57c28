"""BentoML service for the MNIST classifier: `serving.service:MNISTClassifier`."""
