"""Gapshape's version, in this one place: pyproject.toml reads it, and so do the programs'
`--version` options."""

__version__ = "1.0.0"
