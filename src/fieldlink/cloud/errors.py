"""The one place where errors become HTTP responses.

Every API error body has the same shape, ``{"code", "message", "details"}``, where ``code`` is a
stable machine-readable string clients may switch on. Validation details never echo the
submitted value: it may be a password or a token.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final, cast

from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from ninja import NinjaAPI
from ninja.errors import AuthenticationError, HttpError, ValidationError

from fieldlink.kit.errors import HTTP_STATUS, FieldlinkError, RateLimitedError
from fieldlink.kit.logging import get_logger

log = get_logger(__name__)

STATUS_BY_KIND: Final = HTTP_STATUS  # the one mapping, in kit.errors

# Codes for statuses that arrive without one of our errors (framework-level refusals).
CODE_BY_STATUS: dict[int, str] = {
    400: "bad_request",
    401: "unauthenticated",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_error",
    429: "rate_limited",
    500: "internal_error",
    503: "unavailable",
}

MESSAGE_BY_STATUS: dict[int, str] = {
    400: "The request could not be understood.",
    401: "Authentication is required.",
    403: "You do not have permission for this.",
    404: "Not found.",
    405: "This method is not allowed here.",
    413: "The request body is too large.",
    422: "The request is not valid.",
    429: "Too many requests; slow down.",
    500: "Something went wrong on our side. It has been logged.",
    503: "The service is temporarily unavailable.",
}


def error_body(code: str, message: str, details: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"code": code, "message": message, "details": details or {}}


def json_error(
    status: int, code: str | None = None, message: str | None = None, **details: Any
) -> JsonResponse:
    return JsonResponse(
        error_body(
            code or CODE_BY_STATUS.get(status, "error"),
            message or MESSAGE_BY_STATUS.get(status, "Request failed."),
            details,
        ),
        status=status,
    )


def response_for(error: FieldlinkError) -> JsonResponse:
    response = JsonResponse(
        error_body(error.code, error.message, error.details), status=STATUS_BY_KIND[error.kind]
    )
    if isinstance(error, RateLimitedError):
        response["Retry-After"] = str(error.retry_after)
    return response


def safe_validation_details(errors: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Keep where and why a field failed; drop what was sent (``input``) and internals (``ctx``)."""
    safe: list[dict[str, Any]] = []
    for item in errors:
        loc = [str(part) for part in item.get("loc", ())]
        safe.append({"field": ".".join(loc), "type": item.get("type"), "message": item.get("msg")})
    return safe


def install_api_error_handlers(api: NinjaAPI) -> None:
    def on_fieldlink_error(request: HttpRequest, exc: FieldlinkError) -> HttpResponse:
        if exc.kind == "internal":
            log.error("internal_error", code=exc.code, path=request.path)
        return response_for(exc)

    def on_validation(request: HttpRequest, exc: ValidationError) -> HttpResponse:
        return json_error(422, errors=safe_validation_details(list(exc.errors)))

    def on_authentication(request: HttpRequest, exc: AuthenticationError) -> HttpResponse:
        return json_error(401)

    def on_http_error(request: HttpRequest, exc: HttpError) -> HttpResponse:
        return json_error(exc.status_code, message=str(exc) or None)

    def on_404(request: HttpRequest, exc: Http404) -> HttpResponse:
        return json_error(404)

    def on_unexpected(request: HttpRequest, exc: Exception) -> HttpResponse:
        log.exception("unhandled_api_exception", path=request.path)
        return json_error(500)

    handlers: list[tuple[type[Exception], Callable[[HttpRequest, Any], HttpResponse]]] = [
        (FieldlinkError, on_fieldlink_error),
        (ValidationError, on_validation),
        (AuthenticationError, on_authentication),
        (HttpError, on_http_error),
        (Http404, on_404),
        (Exception, on_unexpected),
    ]
    for exc_class, handler in handlers:
        # Ninja types handlers as taking "exception or its class"; it only ever passes instances.
        api.add_exception_handler(exc_class, cast("Any", handler))
