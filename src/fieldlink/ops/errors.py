"""Errors of the ops context, each with a stable code (root: fieldlink.kit.errors)."""
