"""Errors of the billing context, each with a stable code (root: fieldlink.kit.errors)."""
