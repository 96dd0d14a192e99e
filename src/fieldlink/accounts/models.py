"""Persistent state of the accounts context."""
