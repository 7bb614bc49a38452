"""The kdkit version (one place: the package, reports and model cards read it)."""

__version__ = "0.1.0"
