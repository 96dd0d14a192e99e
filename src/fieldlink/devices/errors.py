"""Errors of the devices context, each with a stable code (root: fieldlink.kit.errors)."""
