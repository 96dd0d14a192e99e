"""Errors of the updates context, each with a stable code (root: fieldlink.kit.errors)."""
