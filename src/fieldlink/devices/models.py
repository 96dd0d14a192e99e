"""Persistent state of the devices context."""
