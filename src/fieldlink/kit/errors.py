"""The one error root. Every error we raise on purpose carries a stable machine-readable code.

Errors say *what kind* of failure they are; the HTTP status for each kind is decided in one
place (``HTTP_STATUS`` below, used by the API, the pages and the edge endpoint), so services
never think in status codes.
"""

from __future__ import annotations

from typing import Any, ClassVar, Final, Literal

ErrorKind = Literal[
    "invalid",  # the caller sent something we refuse (422/400)
    "unauthenticated",  # no or bad credentials (401)
    "forbidden",  # authenticated, but not allowed (403)
    "not_found",  # absent, or not visible to this caller (404)
    "conflict",  # state does not allow it (409)
    "too_large",  # size limit (413)
    "rate_limited",  # slow down (429)
    "unavailable",  # a dependency is down (503)
    "internal",  # our fault (500)
]

HTTP_STATUS: Final[dict[ErrorKind, int]] = {
    "invalid": 422,
    "unauthenticated": 401,
    "forbidden": 403,
    "not_found": 404,
    "conflict": 409,
    "too_large": 413,
    "rate_limited": 429,
    "unavailable": 503,
    "internal": 500,
}


class FieldlinkError(Exception):
    code: ClassVar[str] = "error"
    kind: ClassVar[ErrorKind] = "internal"

    def __init__(self, message: str, *, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details: dict[str, Any] = details or {}


class ValidationFailedError(FieldlinkError):
    code = "validation_error"
    kind = "invalid"


class NotFoundError(FieldlinkError):
    code = "not_found"
    kind = "not_found"


class RateLimitedError(FieldlinkError):
    code = "rate_limited"
    kind = "rate_limited"

    def __init__(
        self, message: str, *, retry_after: int, limit: str, details: dict[str, Any] | None = None
    ) -> None:
        super().__init__(message, details={"limit": limit, **(details or {})})
        self.retry_after = retry_after
        self.limit = limit
