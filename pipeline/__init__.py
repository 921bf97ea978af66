"""Online side of rnncast: the Beam streaming job and its Kafka and Prometheus adapters."""
