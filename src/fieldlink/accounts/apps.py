from django.apps import AppConfig


class AccountsConfig(AppConfig):
    name = "fieldlink.accounts"
    label = "accounts"
    verbose_name = "Accounts"
