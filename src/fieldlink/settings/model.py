from __future__ import annotations

import ipaddress
import os
import secrets
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from fieldlink.kit.errors import FieldlinkError

DEV_SECRET_KEY_FILE = "secret_key"  # noqa: S105 -- a file name, not a secret
MIN_SECRET_KEY_LENGTH = 50
# Known-bad keys: Django's docs placeholder and anything a tutorial would paste.
_WEAK_SECRET_PREFIXES = ("django-insecure-", "changeme", "secret", "dev-")


class InsecureSettingsError(FieldlinkError):
    code = "insecure_settings"
    kind = "invalid"


def _config_file() -> Path | None:
    name = os.environ.get("FIELDLINK_CONFIG_FILE")
    return Path(name) if name else None


class FieldlinkSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="FIELDLINK_",
        extra="forbid",
        frozen=True,
    )

    mode: Literal["development", "production"] = "development"
    debug: bool = False
    var_dir: Path = Path("var")
    secret_key: SecretStr | None = None
    allowed_hosts: Annotated[list[str], NoDecode] = Field(default_factory=list)
    database_url: SecretStr | None = None
    redis_url: SecretStr | None = None

    https_port: int = Field(default=8443, ge=0, le=65535)
    http_port: int | None = Field(default=8080, ge=0, le=65535)
    # The HTTPS port browsers see (e.g. 443 behind a load balancer); defaults to https_port.
    public_https_port: int | None = Field(default=None, ge=1, le=65535)
    bind: str = "0.0.0.0"  # noqa: S104 -- a server is meant to be reachable; TLS guards it
    tls: bool = True
    tls_cert: Path | None = None
    tls_key: Path | None = None
    trusted_proxies: Annotated[list[str], NoDecode] = Field(default_factory=list)

    max_body_bytes: int = Field(default=1_048_576, ge=1024, le=256 * 1_048_576)
    metrics_token: SecretStr | None = None
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_file: Path | None = None
    region: str = "eu-central"
    # Mail: with no host, mails land as files in var/outbox (the embedded default).
    email_host: str | None = None
    email_port: int = Field(default=587, ge=1, le=65535)
    email_user: str | None = None
    email_password: SecretStr | None = None
    email_use_tls: bool = True
    email_from: str = "Fieldlink <no-reply@fieldlink.localhost>"
    run_worker: bool = True
    hsts_seconds: int = Field(default=63_072_000, ge=0)

    @field_validator("allowed_hosts", "trusted_proxies", mode="before")
    @classmethod
    def _split_csv(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
        return value

    @field_validator("trusted_proxies")
    @classmethod
    def _proxies_are_networks(cls, value: list[str]) -> list[str]:
        for item in value:
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError as exc:
                raise ValueError(f"trusted proxy {item!r} is not an IP address or network") from exc
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        path = _config_file()
        if path is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=path))
        return tuple(sources)

    # -- derived values -------------------------------------------------------------------

    @property
    def is_production(self) -> bool:
        return self.mode == "production"

    @property
    def tls_dir(self) -> Path:
        return self.var_dir / "tls"

    @property
    def outbox_dir(self) -> Path:
        return self.var_dir / "outbox"

    @property
    def effective_allowed_hosts(self) -> list[str]:
        if self.allowed_hosts or self.is_production:
            return list(self.allowed_hosts)
        return ["localhost", "127.0.0.1", "[::1]", _hostname()]

    @property
    def effective_public_https_port(self) -> int:
        return self.public_https_port or self.https_port

    def resolved_secret_key(self) -> str:
        """The secret key; in development one is generated once and kept in ``var/`` (0600)."""
        if self.secret_key is not None:
            return self.secret_key.get_secret_value()
        if self.is_production:
            raise InsecureSettingsError("FIELDLINK_SECRET_KEY is required in production")
        path = self.var_dir / DEV_SECRET_KEY_FILE
        if not path.exists():
            self.var_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write(secrets.token_urlsafe(64))
        return path.read_text().strip()

    def insecure_values(self) -> list[str]:
        """Every reason these settings are unfit for production, each naming its variable."""
        problems: list[str] = []
        if self.debug:
            problems.append("FIELDLINK_DEBUG must be off")
        key = self.secret_key.get_secret_value() if self.secret_key else ""
        if not key:
            problems.append("FIELDLINK_SECRET_KEY must be set")
        elif len(key) < MIN_SECRET_KEY_LENGTH or len(set(key)) < 10:
            problems.append(
                f"FIELDLINK_SECRET_KEY must be at least {MIN_SECRET_KEY_LENGTH} random characters"
            )
        elif key.lower().startswith(_WEAK_SECRET_PREFIXES):
            problems.append("FIELDLINK_SECRET_KEY looks like a default or example value")
        if not self.allowed_hosts:
            problems.append("FIELDLINK_ALLOWED_HOSTS must name the public host name(s)")
        elif "*" in self.allowed_hosts:
            problems.append("FIELDLINK_ALLOWED_HOSTS must not contain '*'")
        if not self.tls and not self.trusted_proxies:
            problems.append(
                "FIELDLINK_TLS is off and no FIELDLINK_TRUSTED_PROXIES terminate TLS in front"
            )
        if self.tls and (self.tls_cert is None or self.tls_key is None):
            problems.append(
                "FIELDLINK_TLS_CERT and FIELDLINK_TLS_KEY must name a CA-issued certificate"
            )
        if self.hsts_seconds < 31_536_000:
            problems.append("FIELDLINK_HSTS_SECONDS must be at least one year (31536000)")
        return problems

    def check(self) -> None:
        if self.is_production:
            problems = self.insecure_values()
            if problems:
                raise InsecureSettingsError(
                    "refusing to start in production with insecure settings: "
                    + "; ".join(problems),
                    details={"problems": problems},
                )


def _hostname() -> str:
    import socket  # noqa: PLC0415 -- only needed for the development default

    return socket.gethostname().lower()


@lru_cache(maxsize=1)
def load_settings() -> FieldlinkSettings:
    """Build and check the settings once per process."""
    settings = FieldlinkSettings()
    settings.check()
    return settings
