"""Persistent state of the updates context."""
