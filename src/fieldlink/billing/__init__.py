"""Billing: plans, quotas, Stripe checkout and webhooks."""
