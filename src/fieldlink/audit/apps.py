from django.apps import AppConfig


class AuditConfig(AppConfig):
    name = "fieldlink.audit"
    label = "audit"
    verbose_name = "Audit"
