"""Errors of the audit context, each with a stable code (root: fieldlink.kit.errors)."""
