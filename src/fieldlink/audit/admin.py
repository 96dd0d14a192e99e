"""Django admin registrations of the audit context."""
