"""Domain-free helpers: errors, clock, redaction, logging, TLS bootstrap."""
