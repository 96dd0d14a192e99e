"""Fieldlink: a secure Industrial IoT platform (cloud and edge agent)."""

__version__ = "0.1.0"
