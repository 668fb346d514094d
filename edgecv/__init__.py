"""edgecv: distill, prune, quantize, export and benchmark image classifiers for edge targets."""

__version__ = "0.1.0"
