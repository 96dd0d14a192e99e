"""Use cases of the accounts context: the only place that changes its state."""
