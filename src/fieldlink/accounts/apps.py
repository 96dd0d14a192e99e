from django.apps import AppConfig


class AccountsConfig(AppConfig):
    name = "fieldlink.accounts"
    label = "accounts"
    verbose_name = "Accounts"

    def ready(self) -> None:
        # Signal receivers record the security history; importing connects them.
        from fieldlink.accounts import receivers  # noqa: F401, PLC0415
