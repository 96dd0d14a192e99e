"""Django admin registrations of the telemetry context."""
