"""Use cases of the updates context: the only place that changes its state."""
