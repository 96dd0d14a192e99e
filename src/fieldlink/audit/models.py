"""Persistent state of the audit context."""
