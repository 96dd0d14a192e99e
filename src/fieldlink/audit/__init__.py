"""Audit: append-only, hash-chained audit trail."""
