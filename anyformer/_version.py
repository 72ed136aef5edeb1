"""The package version, in a leaf module: what reads it (the folder format, error messages,
pyproject's dynamic version) imports nothing else of anyformer."""

__version__ = "0.1.0"
