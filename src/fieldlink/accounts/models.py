"""Persistent state of the accounts context: users, their security history and API keys."""

from __future__ import annotations

import uuid
from typing import Any, ClassVar

from django.contrib.auth.models import AbstractUser, UserManager
from django.db import models
from django.utils import timezone

from fieldlink.accounts.passwords import MIN_LENGTH as SINGLE_FACTOR_MIN_LENGTH


class FieldlinkUserManager(UserManager["User"]):
    """Users sign in with their e-mail address; there is no user name."""

    use_in_migrations = True

    def _create_user_object(self, email: str, password: str | None, **extra_fields: Any) -> User:
        user = self.model(email=self.normalize_email(email), **extra_fields)
        user.password = ""
        if password is not None:
            user.set_password(password)
        else:
            user.set_unusable_password()
        return user

    def create_user(  # type: ignore[override]
        self, email: str, password: str | None = None, **extra_fields: Any
    ) -> User:
        extra_fields.setdefault("is_staff", False)
        extra_fields.setdefault("is_superuser", False)
        user = self._create_user_object(email, password, **extra_fields)
        user.save(using=self._db)
        return user

    def create_superuser(  # type: ignore[override]
        self, email: str, password: str | None = None, **extra_fields: Any
    ) -> User:
        extra_fields.setdefault("is_staff", True)
        extra_fields.setdefault("is_superuser", True)
        extra_fields.setdefault("staff_role", StaffRole.PLATFORM_ADMIN)
        user = self._create_user_object(email, password, **extra_fields)
        user.save(using=self._db)
        return user


class StaffRole(models.TextChoices):
    NONE = "", "Customer"
    SUPPORT = "support", "Support"
    PLATFORM_ADMIN = "platform_admin", "Platform admin"


class User(AbstractUser):
    # Non-sequential ids: nothing about the number of customers can be read from a URL.
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    username = None  # type: ignore[assignment]  # e-mail is the identifier
    email = models.EmailField("e-mail address", unique=True)
    staff_role = models.CharField(
        max_length=20, choices=StaffRole.choices, default=StaffRole.NONE, blank=True
    )
    # Whether the current password is long enough for an account without a second factor
    # (>= 15 characters). Known only when it is set; MFA may not be removed while it is False.
    password_ok_without_mfa = models.BooleanField(default=False)

    USERNAME_FIELD = "email"
    REQUIRED_FIELDS: ClassVar[list[str]] = []

    objects: ClassVar[FieldlinkUserManager] = FieldlinkUserManager()

    class Meta:
        ordering: ClassVar[list[str]] = ["email"]

    def __str__(self) -> str:
        return self.email

    def set_password(self, raw_password: str | None) -> None:
        super().set_password(raw_password)
        self.password_ok_without_mfa = (
            raw_password is not None and len(raw_password) >= SINGLE_FACTOR_MIN_LENGTH
        )

    @property
    def is_platform_staff(self) -> bool:
        """Support and platform admins: a separate kind of principal that must use MFA."""
        return bool(self.staff_role) or self.is_staff or self.is_superuser


class SecurityEventKind(models.TextChoices):
    SIGN_IN = "sign_in", "Signed in"
    SIGN_IN_FAILED = "sign_in_failed", "Failed sign-in"
    SIGN_OUT = "sign_out", "Signed out"
    RATE_LIMITED = "rate_limited", "Limit reached"
    PASSWORD_CHANGED = "password_changed", "Password changed"
    PASSWORD_RESET = "password_reset", "Password reset"
    EMAIL_CHANGED = "email_changed", "E-mail changed"
    MFA_ADDED = "mfa_added", "Second factor added"
    MFA_REMOVED = "mfa_removed", "Second factor removed"
    RECOVERY_CODES_RESET = "recovery_codes_reset", "Recovery codes regenerated"
    SESSION_REVOKED = "session_revoked", "Session ended"
    API_KEY_CREATED = "api_key_created", "API key created"
    API_KEY_ROTATED = "api_key_rotated", "API key rotated"
    API_KEY_REVOKED = "api_key_revoked", "API key revoked"
    DATA_EXPORT_REQUESTED = "data_export_requested", "Personal data export requested"
    DATA_EXPORT_DOWNLOADED = "data_export_downloaded", "Personal data export downloaded"


class SecurityEvent(models.Model):
    """One line of a user's security history (kept at least 90 days; see the retention task)."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="security_events")
    kind = models.CharField(max_length=32, choices=SecurityEventKind.choices)
    created_at = models.DateTimeField(default=timezone.now)
    ip = models.GenericIPAddressField(null=True, blank=True)
    user_agent = models.CharField(max_length=300, blank=True)
    device = models.CharField(max_length=120, blank=True)
    # Never secrets: ids, names, reasons. Written only by fieldlink.accounts.services.
    details = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering: ClassVar[list[str]] = ["-created_at"]
        indexes: ClassVar[list[models.Index]] = [
            models.Index(fields=["user", "-created_at"], name="secevent_user_time"),
            models.Index(fields=["user", "kind", "-created_at"], name="secevent_user_kind_time"),
        ]

    def __str__(self) -> str:
        return f"{self.kind} {self.created_at:%Y-%m-%d %H:%M}"


class ApiKeyScope(models.TextChoices):
    READ = "read", "Read"
    READ_WRITE = "read_write", "Read and write"


class ApiKey(models.Model):
    """A personal access token. Only its SHA-256 digest is stored; the key is shown once."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="api_keys")
    name = models.CharField(max_length=100)
    # The visible part (e.g. "flk_7Gq2xK9p") that identifies a key in lists and logs.
    prefix = models.CharField(max_length=24, unique=True)
    digest = models.CharField(max_length=64)
    scope = models.CharField(max_length=16, choices=ApiKeyScope.choices)
    created_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField()
    last_used_at = models.DateTimeField(null=True, blank=True)
    last_used_ip = models.GenericIPAddressField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    replaced_by = models.OneToOneField(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="replaces"
    )

    class Meta:
        ordering: ClassVar[list[str]] = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"

    def is_usable(self, now: Any = None) -> bool:
        now = now or timezone.now()
        return self.revoked_at is None and self.expires_at > now


# -- Organisations (tenants) ------------------------------------------------------------------


class Region(models.TextChoices):
    """Where an organisation's data is stored. Fixed at creation: moving data is a project."""

    EU_CENTRAL = "eu-central", "EU Central (Frankfurt)"
    EU_WEST = "eu-west", "EU West (Ireland)"
    EU_NORTH = "eu-north", "EU North (Stockholm)"
    US_EAST = "us-east", "US East (Virginia)"
    US_WEST = "us-west", "US West (Oregon)"
    AP_SOUTHEAST = "ap-southeast", "Asia Pacific (Singapore)"


class Role(models.TextChoices):
    # Ordered from most to least powerful; fieldlink.accounts.access maps roles to permissions.
    OWNER = "owner", "Owner"
    ADMIN = "admin", "Admin"
    ENGINEER = "engineer", "Engineer"
    VIEWER = "viewer", "Viewer"


class Organisation(models.Model):
    # Customer data is read and written only through fieldlink.accounts.access.Scope, which
    # filters each model by its ``organisation_lookup``.
    organisation_lookup: ClassVar[str] = "pk"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    name = models.CharField(max_length=100)
    region = models.CharField(max_length=32, choices=Region.choices)
    created_at = models.DateTimeField(default=timezone.now)
    created_by = models.ForeignKey(
        User, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    # Deletion has a grace period: requested → due; the purge task deletes it once due.
    deletion_requested_at = models.DateTimeField(null=True, blank=True)
    deletion_due_at = models.DateTimeField(null=True, blank=True)
    deletion_requested_by = models.ForeignKey(
        User, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    # Raw telemetry older than this is deleted by the retention task (telemetry.tasks).
    raw_retention_days = models.PositiveIntegerField(default=365)

    class Meta:
        ordering: ClassVar[list[str]] = ["name"]

    def __str__(self) -> str:
        return self.name

    @property
    def pending_deletion(self) -> bool:
        return self.deletion_due_at is not None


class Membership(models.Model):
    organisation_lookup: ClassVar[str] = "organisation"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    organisation = models.ForeignKey(
        Organisation, on_delete=models.CASCADE, related_name="memberships"
    )
    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=16, choices=Role.choices)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering: ClassVar[list[str]] = ["created_at"]
        constraints: ClassVar[list[models.BaseConstraint]] = [
            models.UniqueConstraint(fields=["organisation", "user"], name="membership_unique"),
            # Exactly one owner is kept by the services; the database refuses a second one.
            models.UniqueConstraint(
                fields=["organisation"],
                condition=models.Q(role="owner"),
                name="membership_one_owner",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.user_id} in {self.organisation_id} as {self.role}"


class Invitation(models.Model):
    """An e-mailed invitation. Only the SHA-256 of its token is stored; it is used once."""

    organisation_lookup: ClassVar[str] = "organisation"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    organisation = models.ForeignKey(
        Organisation, on_delete=models.CASCADE, related_name="invitations"
    )
    email = models.EmailField()
    role = models.CharField(max_length=16, choices=Role.choices)
    digest = models.CharField(max_length=64, unique=True)
    invited_by = models.ForeignKey(
        User, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField()
    accepted_at = models.DateTimeField(null=True, blank=True)
    accepted_by = models.ForeignKey(
        User, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering: ClassVar[list[str]] = ["-created_at"]

    def __str__(self) -> str:
        return f"invitation of {self.email} to {self.organisation_id}"

    def status(self, now: Any = None) -> str:
        now = now or timezone.now()
        if self.accepted_at is not None:
            return "accepted"
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at <= now:
            return "expired"
        return "pending"


class ExportKind(models.TextChoices):
    COMPLETE = "complete", "Everything"
    MEASUREMENTS = "measurements", "Measurements only"


class ExportStatus(models.TextChoices):
    PENDING = "pending", "Being prepared"
    READY = "ready", "Ready to download"
    FAILED = "failed", "Failed"
    EXPIRED = "expired", "Expired"


class DataExport(models.Model):
    """A requested export: built in the background, downloadable until it expires.

    ``organisation`` is set for an organisation's export and empty for a user's own data.
    """

    organisation_lookup: ClassVar[str] = "organisation"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    organisation = models.ForeignKey(
        Organisation, null=True, blank=True, on_delete=models.CASCADE, related_name="exports"
    )
    requested_by = models.ForeignKey(User, on_delete=models.CASCADE, related_name="exports")
    kind = models.CharField(max_length=16, choices=ExportKind.choices)
    status = models.CharField(
        max_length=16, choices=ExportStatus.choices, default=ExportStatus.PENDING
    )
    created_at = models.DateTimeField(default=timezone.now)
    ready_at = models.DateTimeField(null=True, blank=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    size = models.PositiveBigIntegerField(null=True, blank=True)
    sha256 = models.CharField(max_length=64, blank=True)
    error = models.CharField(max_length=200, blank=True)

    class Meta:
        ordering: ClassVar[list[str]] = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.kind} export {self.id}"
