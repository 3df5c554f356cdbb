"""Parley: a verifiable, end-to-end encrypted line for direct talks."""

__version__ = "0.1.0"
__all__ = ["__version__"]
