"""Use cases of the audit context: the only place that changes its state."""
