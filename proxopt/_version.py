"""The one place the version of proxopt is written (pyproject reads it)."""

__version__ = "0.2.0.dev0"
