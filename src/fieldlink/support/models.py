"""Persistent state of the support context."""
