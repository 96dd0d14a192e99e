"""Errors of the support context, each with a stable code (root: fieldlink.kit.errors)."""
