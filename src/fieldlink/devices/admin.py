"""Django admin registrations of the devices context."""
