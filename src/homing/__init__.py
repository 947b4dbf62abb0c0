"""Homing: a message queue whose one promise is that an acknowledged message is never lost."""

__version__ = "0.1.0"

__all__ = ["__version__"]
