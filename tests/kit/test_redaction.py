from __future__ import annotations

import json
import string
import time
import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fieldlink.kit.redaction import (
    FIELDLINK_KEY_PREFIXES,
    REDACTED,
    is_secret_key,
    neutralize_newlines,
    redact,
    redact_text,
)

SECRET = "hunter2-Zq9xW"

SECRET_KEYS = [
    "password",
    "Password",
    "new_password",
    "passwd",
    "pwd",
    "passphrase",
    "secret",
    "client_secret",
    "token",
    "access_token",
    "refresh-token",
    "authorization",
    "Authorization",
    "HTTP_AUTHORIZATION",
    "proxy-authorization",
    "cookie",
    "Cookie",
    "set-cookie",
    "Set-Cookie",
    "api_key",
    "apikey",
    "apiKey",
    "X-API-Key",
    "card",
    "card_number",
    "credit_card",
    "cvc",
    "cvv",
    "session",
    "sessionid",
    "session_id",
    "session_key",
    "csrf",
    "csrftoken",
    "csrfmiddlewaretoken",
    "X-CSRFToken",
    "private_key",
    "privateKey",
    "credential",
    "device_credential",
    "otp",
    "totp",
    "totp_code",
    "totpCode",
    "recovery_code",
    "recovery_codes",
    "backup_code",
    "enrollment_code",
    "enrollmentCode",
    "verification_code",
    "one_time_code",
    "auth",
    "pass",
]

HARMLESS_KEYS = [
    "code",
    "Code",
    "status_code",
    "error_code",
    "country_code",
    "zip_code",
    "message",
    "event",
    "details",
    "path",
    "method",
    "user",
    "email",
    "device_id",
    "hotpath",
    "footprint",
    "cardinality",
    "discard",
    "author",
    "keyboard",
    "api_key_id",
    "token_type",
    "token_prefix",
    "password_changed_at",
    "password_length",
    "credential_expires",
    "otp_count",
]


@pytest.mark.parametrize("key", SECRET_KEYS)
def test_value_under_a_secret_key_is_redacted(key: str) -> None:
    assert is_secret_key(key)
    assert redact({key: SECRET, "user": "bob"}) == {key: REDACTED, "user": "bob"}


@pytest.mark.parametrize("key", HARMLESS_KEYS)
def test_value_under_a_harmless_key_is_kept(key: str) -> None:
    assert not is_secret_key(key)
    assert redact({key: "validation_error"}) == {key: "validation_error"}


def test_error_body_code_is_not_redacted() -> None:
    body = {
        "code": "validation_error",
        "message": "Check the highlighted fields.",
        "details": {"errors": [{"field": "body.count", "code": "int_parsing"}]},
    }
    assert redact(body) == body


def test_any_value_type_under_a_secret_key_is_replaced() -> None:
    value = {"otp": 123456, "session": {"id": "abc", "user": "bob"}, "token": ["a", "b"]}
    assert redact(value) == {"otp": REDACTED, "session": REDACTED, "token": REDACTED}


def test_absent_secrets_stay_visible() -> None:
    value = {"password": None, "token": "", "mfa_secret": False}
    assert redact(value) == value


def test_nested_structures_are_walked_and_keep_their_shape() -> None:
    credentials = {"password": SECRET}
    value: dict[str, object] = {
        "request": {
            "headers": [("Host", "example.com"), {"Authorization": "Bearer abc"}],
            "form": {"user": "bob", "credentials": credentials},
        },
        "tags": ("a", f"password={SECRET}"),
    }
    result = redact(value)
    assert result == {
        "request": {
            "headers": [("Host", "example.com"), {"Authorization": REDACTED}],
            "form": {"user": "bob", "credentials": REDACTED},
        },
        "tags": ("a", f"password={REDACTED}"),
    }
    assert isinstance(result["tags"], tuple)
    assert credentials == {"password": SECRET}, "input untouched"


def test_non_string_leaves_are_returned_as_they_are() -> None:
    marker = object()
    assert redact([1, 2.5, None, True, marker]) == [1, 2.5, None, True, marker]
    assert redact(42) == 42


def test_very_deep_structures_are_cut_off_on_the_safe_side() -> None:
    deep: list[object] = [SECRET]
    for _ in range(100):
        deep = [deep]
    assert SECRET not in json.dumps(redact(deep))


# --- free text ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "GET /login?next=/home&password=hunter2&token=abc123 HTTP/1.1",
            f"GET /login?next=/home&password={REDACTED}&token={REDACTED} HTTP/1.1",
        ),
        ("user=bob&passwd=x%40y&remember=1", f"user=bob&passwd={REDACTED}&remember=1"),
        ("?api_key=k1&apikey=k2&x=1", f"?api_key={REDACTED}&apikey={REDACTED}&x=1"),
        ("csrfmiddlewaretoken=abc&otp=123456", f"csrfmiddlewaretoken={REDACTED}&otp={REDACTED}"),
        ("a=password=b", f"a=password={REDACTED}"),
        ("password = 'p w' rest", f"password = '{REDACTED}' rest"),
        ('password="unterminated', f'password="{REDACTED}'),
        ("User(name='bob', password='x', id=3)", f"User(name='bob', password='{REDACTED}', id=3)"),
        (
            "Authorization: Bearer abc.DEF.123\nHost: x",
            f"Authorization: {REDACTED}\nHost: x",
        ),
        ("headers: authorization: Basic dXNlcjpwYXNz", f"headers: authorization: {REDACTED}"),
        ("Cookie: sessionid=abc; csrftoken=def", f"Cookie: {REDACTED}"),
        ("Set-Cookie: sessionid=abc; Path=/; HttpOnly", f"Set-Cookie: {REDACTED}"),
        ("X-API-Key: flk_whatever", f"X-API-Key: {REDACTED}"),
        ("Password: hunter2\nuser: bob", f"Password: {REDACTED}\nuser: bob"),
        ("calling upstream with Bearer abcDEF123456", f"calling upstream with Bearer {REDACTED}"),
        ("basic ZGV2aWNlOnNlY3JldA==", f"basic {REDACTED}"),
        (
            '{"password": "x\\"y", "user": "bob", "totp_code": 123456, "otp": null}',
            f'{{"password": "{REDACTED}", "user": "bob", "totp_code": {REDACTED}, "otp": null}}',
        ),
        (
            "{'recovery_code': 'abcd-efgh', 'code': 'E1'}",
            f"{{'recovery_code': '{REDACTED}', 'code': 'E1'}}",
        ),
        ('body={\\"password\\": \\"x\\"}', f'body={{\\"password\\": \\"{REDACTED}\\"}}'),
        (
            "postgres://fieldlink:s3cr3t@db.internal:5432/fieldlink",
            f"postgres://fieldlink:{REDACTED}@db.internal:5432/fieldlink",
        ),
        ("redis://:pw@cache:6379/0", f"redis://:{REDACTED}@cache:6379/0"),
        (
            "jwt eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjMifQ.c2lnbmF0dXJl-_x end",
            f"jwt {REDACTED} end",
        ),
        ("stripe sk_live_51Habcdefghijklmn ok", f"stripe sk_live_{REDACTED} ok"),
        ("whsec_abcdefgh12345678", f"whsec_{REDACTED}"),
    ],
)
def test_secrets_in_text_are_redacted(text: str, expected: str) -> None:
    assert redact_text(text) == expected


@pytest.mark.parametrize("prefix", FIELDLINK_KEY_PREFIXES)
def test_fieldlink_key_shapes_are_redacted_but_keep_their_prefix(prefix: str) -> None:
    key = prefix + "Ab3_-xYz0123456789"
    assert redact_text(f"using {key} now") == f"using {prefix}{REDACTED} now"
    assert redact_text(f"{prefix}short") == f"{prefix}short", "fewer than 16 chars: not a key"


def test_pem_private_key_block_is_redacted() -> None:
    pem = (
        "-----BEGIN EC PRIVATE KEY-----\nMHcCAQEEIBx\nAoGBAK\n-----END EC PRIVATE KEY-----\n"
        "-----BEGIN CERTIFICATE-----\nMIIBcert\n-----END CERTIFICATE-----"
    )
    result = redact_text(f"loaded {pem}")
    assert "MHcCAQEEIBx" not in result
    assert "AoGBAK" not in result
    assert "MIIBcert" in result, "certificates are public"
    assert f"-----BEGIN EC PRIVATE KEY-----{REDACTED}-----END EC PRIVATE KEY-----" in result


def test_truncated_pem_private_key_is_redacted_to_the_end() -> None:
    result = redact_text("-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBg")
    assert "MIIEvQIBADANBg" not in result


@pytest.mark.parametrize(
    "text",
    [
        "Device 42 sent 1000 values in 3.2 ms",
        "GET /api/v1/devices/123e4567-e89b-12d3-a456-426614174000/telemetry HTTP/1.1 200",
        str(uuid.uuid4()),
        "2025-01-31T12:00:00.123456Z",
        "Basic information about Bearer authentication",
        "the token expired; please sign in again",
        "invalid code: E42 (status code 400)",
        "code=validation_error&page=2",
        "https://example.com/path?page=2&sort=name",
        "Password too short",
        "please reset your password at https://fieldlink.example/reset",
        "sk_ is a prefix, fle_ too",
        "a = b, c: d",
        "",
    ],
)
def test_ordinary_text_is_left_alone(text: str) -> None:
    assert redact_text(text) == text


# --- properties -----------------------------------------------------------------------------------

# Filler can never contain a secret: secrets start with "S3CRET-" and filler has no digits or "-".
_filler_text = st.text(alphabet=string.ascii_letters + " _./", max_size=20)
_filler_keys = st.sampled_from(HARMLESS_KEYS)
_secrets = st.text(min_size=1, max_size=40).map(lambda s: "S3CRET-" + s)


def _structures(leaf: st.SearchStrategy[object]) -> st.SearchStrategy[object]:
    return st.recursive(
        leaf,
        lambda children: st.one_of(
            st.lists(children, max_size=4),
            st.lists(children, max_size=4).map(tuple),
            st.dictionaries(_filler_keys, children, max_size=4),
        ),
        max_leaves=12,
    )


@st.composite
def _structure_with_a_secret(draw: st.DrawFn) -> tuple[object, str]:
    secret = draw(_secrets)
    planted = {draw(st.sampled_from(SECRET_KEYS)): secret}
    around = draw(_structures(st.one_of(_filler_text, st.integers(), st.none())))
    path = draw(st.sampled_from(["top", "list", "dict", "tuple"]))
    holder: object = {
        "top": planted,
        "list": [around, planted],
        "dict": {"outer": around, "inner": {"deeper": planted}},
        "tuple": (around, [planted]),
    }[path]
    return holder, secret


@given(_structure_with_a_secret())
def test_secret_under_a_secret_key_never_survives(case: tuple[object, str]) -> None:
    value, secret = case
    assert secret not in repr(redact(value))


@given(
    st.sampled_from(SECRET_KEYS),
    st.text(alphabet=string.ascii_letters + string.digits + "-_.~%", min_size=1),
)
def test_secret_in_a_query_string_never_survives(key: str, secret: str) -> None:
    text = f"/cb?page=2&{key}=S3CRET-{secret}&x=1"
    assert f"S3CRET-{secret}" not in redact_text(text)


@given(
    st.sampled_from(FIELDLINK_KEY_PREFIXES),
    st.text(alphabet=string.ascii_letters + string.digits + "-_", min_size=16, max_size=64),
)
def test_fieldlink_keys_never_survive(prefix: str, body: str) -> None:
    assert body not in redact_text(f"key {prefix}{body} used")


@given(st.text())
def test_redact_text_is_idempotent(text: str) -> None:
    once = redact_text(text)
    assert redact_text(once) == once


@given(
    st.text(
        alphabet=st.sampled_from(
            list("password=token:Bearer Authorization\"'{}&; \nflk_eyJ.abcXYZ0123456789-_@/")
        )
    )
)
def test_redact_text_is_idempotent_on_secret_shaped_text(text: str) -> None:
    once = redact_text(text)
    assert redact_text(once) == once


@given(_structures(st.one_of(st.text(), st.integers(), st.none())))
def test_redact_is_idempotent(value: object) -> None:
    once = redact(value)
    assert redact(once) == once


# --- log forging ----------------------------------------------------------------------------------


def test_neutralize_newlines_keeps_a_value_on_one_line() -> None:
    forged = "bob\n2025-01-01 INFO admin signed in\r\x1b[2K\u2028x"
    result = neutralize_newlines(forged)
    assert result == "bob\\n2025-01-01 INFO admin signed in\\r\\x1b[2K\\u2028x"
    assert len(result.splitlines()) == 1


@given(st.text())
def test_neutralize_newlines_never_leaves_a_line_break(text: str) -> None:
    assert len(neutralize_newlines(text).splitlines()) <= 1


@pytest.mark.parametrize(
    "text",
    [
        "password=" * 20_000,
        '"password": "' * 20_000,
        "a" * 100_000 + "://",
        "http://u:" * 20_000,
        "-----BEGIN PRIVATE KEY-----" * 5_000,
    ],
    ids=["assignments", "unclosed-quotes", "long-scheme", "userinfo", "pem-headers"],
)
def test_adversarial_input_is_handled_in_linear_time(text: str) -> None:
    started = time.perf_counter()
    redact_text(text)
    assert time.perf_counter() - started < 2.0


@pytest.mark.parametrize(
    ("path", "secret"),
    [
        ("/accounts/confirm-email/MTA:1vQz:AbCdEfGhIjKlMnOp/", "MTA:1vQz:AbCdEfGhIjKlMnOp"),
        (
            "/accounts/password/reset/key/1a-cr9x2b-4f2d6e8a1b3c5d7e9f0a2b4c6d8e0f1a/",
            "cr9x2b-4f2d6e8a1b3c5d7e9f0a2b4c6d8e0f1a",
        ),
    ],
)
def test_one_time_link_keys_in_logged_paths_are_redacted(path: str, secret: str) -> None:
    line = f'127.0.0.1:5000 - "GET {path} HTTP/1.1" 200'
    assert secret not in redact_text(line)
    assert "/accounts/" in redact_text(line)


def test_reset_link_after_key_exchange_is_left_alone() -> None:
    line = "GET /accounts/password/reset/key/1a-set-password/ HTTP/1.1"
    assert redact_text(line) == line
