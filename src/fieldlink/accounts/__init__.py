"""Accounts: users, organisations, memberships, roles, API keys, security events."""
