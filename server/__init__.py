"""inferbox: a Kaito-style single-container chat inference server."""

__version__ = "0.1.0"
