"""Django admin registrations of the devices context: deliberately none.

Sites, assets, measuring points and edge devices are customer data. Platform staff see no
customer data (docs/tenancy.md); support reaches it only through a customer-granted, audited
grant in the product's own pages, never through the Django admin, which bypasses the Scope.
"""
