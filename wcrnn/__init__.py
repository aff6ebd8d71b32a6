"""wcrnn: weakly coupled residual RNNs and memory sweeps."""
__version__ = "0.1.0"
