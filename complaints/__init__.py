"""The `complaints` command and the composition of the services into one system."""

__version__ = "0.1.0"
