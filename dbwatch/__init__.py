"""dbwatch: a sidecar monitor for async Python web apps on PostgreSQL."""

__version__ = "0.1.0"
