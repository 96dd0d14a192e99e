"""Web pages of the telemetry context (thin: parse, call one service, render)."""
