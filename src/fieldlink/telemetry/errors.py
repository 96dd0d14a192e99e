"""Errors of the telemetry context, each with a stable code (root: fieldlink.kit.errors)."""
