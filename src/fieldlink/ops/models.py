"""Persistent state of the ops context."""
