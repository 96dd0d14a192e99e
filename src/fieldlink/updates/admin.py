"""Django admin registrations of the updates context."""
