"""Django admin registrations of the accounts context."""
