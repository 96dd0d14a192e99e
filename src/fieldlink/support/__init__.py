"""Support: tickets, vulnerability reports, support-access grants."""
