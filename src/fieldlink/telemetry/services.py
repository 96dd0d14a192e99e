"""Use cases of the telemetry context: the only place that changes its state."""
