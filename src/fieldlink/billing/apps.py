from django.apps import AppConfig


class BillingConfig(AppConfig):
    name = "fieldlink.billing"
    label = "billing"
    verbose_name = "Billing"
