"""jaxcl: continual learning in JAX/Flax at TPU throughput."""

__version__ = "0.1.0"
