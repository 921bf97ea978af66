"""Throughput, latency and memory benchmarks of rnncast (``make bench`` runs :mod:`benchmarks.run`)."""
