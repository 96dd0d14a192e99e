"""Persistent state of the telemetry context."""
