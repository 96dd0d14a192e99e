"""Persistent state of the billing context."""
