"""Django admin registrations of the ops context."""
