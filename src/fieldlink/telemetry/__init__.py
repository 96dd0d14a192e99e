"""Telemetry: ingestion, storage, queries, thresholds, alarms."""
