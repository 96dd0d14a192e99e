"""Errors of the accounts context, each with a stable code (root: fieldlink.kit.errors)."""
