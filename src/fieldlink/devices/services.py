"""Use cases of the devices context: the only place that changes its state."""
