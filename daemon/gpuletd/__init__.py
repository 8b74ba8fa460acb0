"""gpuletd: the node-local GPU model broker daemon."""

__version__ = "0.1.0"
