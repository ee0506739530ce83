"""kdexport's version: a leaf module (imports nothing), so any module can stamp it."""

__version__ = "0.1.0"
