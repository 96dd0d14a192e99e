"""The typed settings object and the production refusal of insecure values."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from fieldlink.settings import FieldlinkSettings, InsecureSettingsError
from tests.support.server import subprocess_env

STRONG_KEY = "k" + "Zq7vX2pL9sT4wY8bN3mR6cF1hJ5dG0aE" * 2


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in list(os.environ):
        if name.startswith("FIELDLINK_") and name != "FIELDLINK_TEST_LOG_DIR":
            monkeypatch.delenv(name)
    return monkeypatch


def _production(**overrides: object) -> FieldlinkSettings:
    values: dict[str, object] = {
        "mode": "production",
        "secret_key": STRONG_KEY,
        "allowed_hosts": ["plant.example"],
        "tls_cert": Path("/etc/fieldlink/cert.pem"),
        "tls_key": Path("/etc/fieldlink/key.pem"),
    }
    values.update(overrides)
    return FieldlinkSettings(**values)  # type: ignore[arg-type]


def test_embedded_defaults(clean_env: pytest.MonkeyPatch) -> None:
    settings = FieldlinkSettings()
    assert settings.mode == "development"
    assert settings.database_url is None
    assert settings.redis_url is None
    assert settings.https_port == 8443
    assert settings.http_port == 8080
    assert settings.tls is True
    assert "localhost" in settings.effective_allowed_hosts


def test_environment_variables_are_read(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("FIELDLINK_ALLOWED_HOSTS", "a.example, b.example")
    clean_env.setenv("FIELDLINK_TRUSTED_PROXIES", "10.0.0.0/8,192.0.2.1")
    clean_env.setenv("FIELDLINK_DATABASE_URL", "postgresql://u@db/fieldlink")
    settings = FieldlinkSettings()
    assert settings.allowed_hosts == ["a.example", "b.example"]
    assert settings.trusted_proxies == ["10.0.0.0/8", "192.0.2.1"]
    assert settings.database_url is not None
    assert "postgresql" not in repr(settings)  # secrets do not show in reprs or logs


def test_optional_toml_file_is_read_and_environment_wins(
    clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    config = tmp_path / "fieldlink.toml"
    config.write_text('region = "eu-west"\nhttps_port = 9443\n')
    clean_env.setenv("FIELDLINK_CONFIG_FILE", str(config))
    clean_env.setenv("FIELDLINK_HTTPS_PORT", "10443")
    settings = FieldlinkSettings()
    assert settings.region == "eu-west"
    assert settings.https_port == 10443


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("FIELDLINK_TRUSTED_PROXIES", "not-an-ip"),
        ("FIELDLINK_HTTPS_PORT", "70000"),
        ("FIELDLINK_MODE", "staging"),
        ("FIELDLINK_MAX_BODY_BYTES", "12"),
    ],
)
def test_bad_values_are_refused_with_the_field_named(
    clean_env: pytest.MonkeyPatch, name: str, value: str
) -> None:
    clean_env.setenv(name, value)
    with pytest.raises(ValidationError) as excinfo:
        FieldlinkSettings()
    assert name.removeprefix("FIELDLINK_").lower() in str(excinfo.value)


def test_secure_production_settings_pass() -> None:
    _production().check()


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        ({"debug": True}, "FIELDLINK_DEBUG"),
        ({"secret_key": None}, "FIELDLINK_SECRET_KEY"),
        ({"secret_key": "short"}, "FIELDLINK_SECRET_KEY"),
        ({"secret_key": "a" * 80}, "FIELDLINK_SECRET_KEY"),
        ({"secret_key": "django-insecure-" + STRONG_KEY}, "FIELDLINK_SECRET_KEY"),
        ({"allowed_hosts": []}, "FIELDLINK_ALLOWED_HOSTS"),
        ({"allowed_hosts": ["*"]}, "FIELDLINK_ALLOWED_HOSTS"),
        ({"tls": False}, "FIELDLINK_TLS"),
        ({"tls_cert": None}, "FIELDLINK_TLS_CERT"),
        ({"hsts_seconds": 3600}, "FIELDLINK_HSTS_SECONDS"),
    ],
)
def test_production_refuses_insecure_values_and_names_them(
    overrides: dict[str, object], named: str
) -> None:
    with pytest.raises(InsecureSettingsError) as excinfo:
        _production(**overrides).check()
    assert named in excinfo.value.message
    assert excinfo.value.code == "insecure_settings"


def test_production_without_tls_is_allowed_behind_trusted_proxies() -> None:
    _production(tls=False, tls_cert=None, tls_key=None, trusted_proxies=["10.0.0.2"]).check()


def test_production_refusal_lists_every_problem_at_once() -> None:
    with pytest.raises(InsecureSettingsError) as excinfo:
        _production(debug=True, secret_key=None, allowed_hosts=[]).check()
    assert len(excinfo.value.details["problems"]) == 3


def test_development_secret_key_is_generated_once_with_mode_0600(tmp_path: Path) -> None:
    settings = FieldlinkSettings(var_dir=tmp_path)
    first = settings.resolved_secret_key()
    assert len(first) >= 64
    assert settings.resolved_secret_key() == first
    mode = stat.S_IMODE((tmp_path / "secret_key").stat().st_mode)
    assert mode == 0o600


def test_serve_refuses_to_start_in_production_with_insecure_settings(tmp_path: Path) -> None:
    env = subprocess_env(
        FIELDLINK_MODE="production", FIELDLINK_DEBUG="true", FIELDLINK_VAR_DIR=str(tmp_path)
    )
    result = subprocess.run(
        [sys.executable, "-m", "fieldlink.cli", "serve"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    for named in ("FIELDLINK_DEBUG", "FIELDLINK_SECRET_KEY", "FIELDLINK_ALLOWED_HOSTS"):
        assert named in result.stderr
    assert not (tmp_path / "tls").exists(), "nothing may be started or created before refusing"
