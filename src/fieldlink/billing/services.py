"""Use cases of the billing context: the only place that changes its state."""
