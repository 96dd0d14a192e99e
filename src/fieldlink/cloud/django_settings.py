"""Django settings, derived entirely from the typed ``FieldlinkSettings`` object.

Nothing here is read from the environment directly: ``fieldlink.settings`` is the one place.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dj_database_url
from csp.constants import NONE, SELF

from fieldlink.settings import load_settings

FL = load_settings()
BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = FL.var_dir.resolve()

SECRET_KEY = FL.resolved_secret_key()
DEBUG = FL.debug
ALLOWED_HOSTS = FL.effective_allowed_hosts
FIELDLINK = FL

INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.admin",
    "django.contrib.humanize",
    # Before allauth: our templates override allauth's (layouts, elements, MFA pages).
    "fieldlink.accounts.apps.AccountsConfig",
    "allauth",
    "allauth.account",
    "allauth.mfa",
    "allauth.usersessions",
    "allauth.headless",
    "django_tasks",
    "django_tasks_db",
    "fieldlink.cloud.apps.CloudConfig",
    "fieldlink.devices",
    "fieldlink.telemetry",
    "fieldlink.updates",
    "fieldlink.support",
    "fieldlink.billing",
    "fieldlink.audit",
    "fieldlink.ops",
]

MIDDLEWARE = [
    "fieldlink.cloud.middleware.RequestMetricsMiddleware",
    "django.middleware.security.SecurityMiddleware",
    # Outermost after SecurityMiddleware, so redirects, static files and CSRF refusals get it too.
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "fieldlink.cloud.middleware.SecurityBaselineMiddleware",
    "csp.middleware.CSPMiddleware",
    "fieldlink.cloud.middleware.APIErrorBodyMiddleware",
    "fieldlink.cloud.middleware.DependencyOutageMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "allauth.account.middleware.AccountMiddleware",
    "allauth.usersessions.middleware.UserSessionsMiddleware",
]

ROOT_URLCONF = "fieldlink.cloud.urls"
ASGI_APPLICATION = "fieldlink.cloud.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "fieldlink.cloud.views.site_context",
            ],
        },
    },
]


def _database() -> dict[str, Any]:
    if FL.database_url is not None:
        return dict(
            dj_database_url.parse(
                FL.database_url.get_secret_value(), conn_max_age=0, conn_health_checks=True
            )
        )
    VAR_DIR.mkdir(parents=True, exist_ok=True)
    return {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": VAR_DIR / "fieldlink.sqlite3",
        # WAL and a busy timeout let the in-process worker and request handlers share the file.
        "OPTIONS": {
            "transaction_mode": "IMMEDIATE",
            "timeout": 20,
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        },
    }


DATABASES = {"default": _database()}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"


def _cache() -> dict[str, Any]:
    if FL.redis_url is not None:
        return {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": FL.redis_url.get_secret_value(),
            "KEY_PREFIX": "fieldlink",
        }
    return {"BACKEND": "django.core.cache.backends.locmem.LocMemCache", "LOCATION": "fieldlink"}


CACHES = {"default": _cache()}

TASKS = {
    "default": {
        "BACKEND": "django_tasks_db.DatabaseBackend",
        "QUEUES": ["default"],
    }
}

# -- Accounts (django-allauth) ----------------------------------------------------------
AUTH_USER_MODEL = "accounts.User"
AUTHENTICATION_BACKENDS = ["allauth.account.auth_backends.AuthenticationBackend"]
# bcrypt (cost 12) behind a SHA-256 pre-hash: nothing is cut at bcrypt's 72-byte limit. Older
# hashes keep verifying and are re-hashed with the first hasher at the next sign-in.
PASSWORD_HASHERS = [
    # Django's BCryptSHA256PasswordHasher with a bound on concurrent hashing (same format).
    "fieldlink.accounts.hashers.BoundedBCryptSHA256PasswordHasher",
    "django.contrib.auth.hashers.PBKDF2PasswordHasher",
]
AUTH_PASSWORD_VALIDATORS: list[dict[str, Any]] = [
    {"NAME": f"fieldlink.accounts.passwords.{name}"}
    for name in (
        "LengthPolicyValidator",
        "BlocklistValidator",
        "PersonalInformationValidator",
        "StrengthValidator",
    )
]
PASSWORD_RESET_TIMEOUT = 60 * 60  # reset links die after one hour

LOGIN_URL = "account_login"
LOGIN_REDIRECT_URL = "accounts:profile"
ACCOUNT_ADAPTER = "fieldlink.accounts.adapters.AccountAdapter"
ACCOUNT_LOGIN_METHODS = {"email"}
ACCOUNT_SIGNUP_FIELDS = ["email*", "password1*", "password2*"]
ACCOUNT_USER_MODEL_USERNAME_FIELD = None
ACCOUNT_UNIQUE_EMAIL = True
ACCOUNT_EMAIL_VERIFICATION = "mandatory"
ACCOUNT_CONFIRM_EMAIL_ON_GET = False
ACCOUNT_PREVENT_ENUMERATION = True
ACCOUNT_EMAIL_NOTIFICATIONS = True
ACCOUNT_LOGIN_ON_EMAIL_CONFIRMATION = False
ACCOUNT_LOGIN_ON_PASSWORD_RESET = False
ACCOUNT_LOGOUT_ON_PASSWORD_CHANGE = False  # this session stays; all others end (services)
ACCOUNT_SESSION_REMEMBER = None
ACCOUNT_DEFAULT_HTTP_PROTOCOL = "https"
ACCOUNT_EMAIL_SUBJECT_PREFIX = "[Fieldlink] "
# Escalating limits (see docs/security.md). Failed sign-ins per account (key) never exceed
# 5 + 5 + ... within an hour: at most 20 per account per hour, far below the 100 allowed.
ACCOUNT_RATE_LIMITS = {
    "login_failed": "10/m/ip,60/h/ip,5/5m/key,10/h/key,20/d/key",
    "login": "30/m/ip",
    "signup": "5/m/ip,20/h/ip",
    "reset_password": "5/m/ip,20/h/ip,3/15m/key",
    "reset_password_from_key": "20/m/ip",
    "change_password": "5/m/user",
    "manage_email": "10/m/user",
    "reauthenticate": "10/m/user",
    "confirm_email": "1/3m/key",
}
MFA_ADAPTER = "fieldlink.accounts.adapters.MFAAdapter"
MFA_SUPPORTED_TYPES = ["totp", "webauthn", "recovery_codes"]
MFA_PASSKEY_LOGIN_ENABLED = True
MFA_TOTP_ISSUER = "Fieldlink"
# Wrong MFA codes count as failed sign-ins (allauth's login_failed limits, per account and IP).
USERSESSIONS_TRACK_ACTIVITY = True
HEADLESS_CLIENTS = ("app", "browser")
HEADLESS_SERVE_SPECIFICATION = True

# -- Mail ---------------------------------------------------------------------------------
DEFAULT_FROM_EMAIL = FL.email_from
SERVER_EMAIL = FL.email_from
if FL.email_host:
    EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    EMAIL_HOST = FL.email_host
    EMAIL_PORT = FL.email_port
    EMAIL_HOST_USER = FL.email_user or ""
    EMAIL_HOST_PASSWORD = FL.email_password.get_secret_value() if FL.email_password else ""
    EMAIL_USE_TLS = FL.email_use_tls
    EMAIL_TIMEOUT = 10
else:
    EMAIL_BACKEND = "django.core.mail.backends.filebased.EmailBackend"
    EMAIL_FILE_PATH = str(FL.outbox_dir.resolve())

LANGUAGE_CODE = "en"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "/static/"
# No collect step: WhiteNoise serves straight from the apps' static/ folders (finders), so a
# fresh checkout serves its assets with nothing to build.
STATIC_ROOT = None
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}
# Served by the app itself (no CDN): WhiteNoise finds files in the apps' static/ folders.
WHITENOISE_USE_FINDERS = True
WHITENOISE_AUTOREFRESH = DEBUG

# -- Security baseline ------------------------------------------------------------------
SECURE_HSTS_SECONDS = FL.hsts_seconds
SECURE_HSTS_INCLUDE_SUBDOMAINS = True
SECURE_HSTS_PRELOAD = False  # preload is a one-way door for the operator's domain; opt in by hand
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
SECURE_CROSS_ORIGIN_OPENER_POLICY = "same-origin"
# The server speaks TLS itself (or sits behind a trusted proxy that does); uvicorn sets the
# scheme only from trusted proxies, so no header-based redirect logic is needed here.
SECURE_SSL_REDIRECT = False
X_FRAME_OPTIONS = "DENY"

SESSION_COOKIE_NAME = "__Host-fieldlink-session"
SESSION_COOKIE_SECURE = True
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"
SESSION_COOKIE_AGE = 60 * 60 * 12
CSRF_COOKIE_NAME = "__Host-fieldlink-csrf"
CSRF_COOKIE_SECURE = True
CSRF_COOKIE_SAMESITE = "Strict"
CSRF_FAILURE_VIEW = "fieldlink.cloud.views.csrf_failure"

DATA_UPLOAD_MAX_MEMORY_SIZE = FL.max_body_bytes
FILE_UPLOAD_MAX_MEMORY_SIZE = FL.max_body_bytes

CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": [NONE],
        "script-src": [SELF],
        "style-src": [SELF],
        "img-src": [SELF, "data:"],
        "font-src": [SELF],
        "connect-src": [SELF],
        "manifest-src": [SELF],
        "form-action": [SELF],
        "frame-ancestors": [NONE],
        "base-uri": [NONE],
        "object-src": [NONE],
    }
}
PERMISSIONS_POLICY = (
    "camera=(), microphone=(), geolocation=(), payment=(), usb=(), interest-cohort=()"
)

# Logging is configured by fieldlink.kit.logging (one redaction layer); Django must not add its own.
LOGGING_CONFIG = None

NINJA_PAGINATION_PER_PAGE = 50

# Webhooks may only reach public addresses (no SSRF into the private network). Only the test
# suite turns this on, to deliver to a receiver on 127.0.0.1; it is not a FIELDLINK_* setting,
# so no deployment can.
WEBHOOKS_ALLOW_LOOPBACK = False
