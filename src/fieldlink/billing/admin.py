"""Django admin registrations of the billing context."""
