"""Django admin registrations of the support context."""
