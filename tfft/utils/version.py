"""The version of tfft, readable from any layer (`tfft.__version__` is the same string)."""

__version__ = "0.1.0"
