"""Use cases of the support context: the only place that changes its state."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from fieldlink.kit.clock import utcnow

# RFC 9116 §2.5.5 recommends an Expires less than a year ahead; we stay well inside it and
# recompute it per response so a long-running server never serves an expired file.
SECURITY_TXT_LIFETIME = timedelta(days=180)
PREFERRED_LANGUAGES = "en, de"


def security_txt(
    *, contact_url: str, canonical_url: str, policy_url: str, now: datetime | None = None
) -> str:
    expires = (now or utcnow()) + SECURITY_TXT_LIFETIME
    expires = expires.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    lines = [
        "# Report security vulnerabilities through a Fieldlink support ticket (category:",
        "# security report). Please do not disclose publicly before we have answered.",
        f"Contact: {contact_url}",
        f"Expires: {expires.strftime('%Y-%m-%dT%H:%M:%SZ')}",
        f"Preferred-Languages: {PREFERRED_LANGUAGES}",
        f"Canonical: {canonical_url}",
        f"Policy: {policy_url}",
    ]
    return "\n".join(lines) + "\n"
