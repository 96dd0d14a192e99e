"""Secret redaction for everything that may end up in a log.

A pure core: no I/O, no Django, no logging. ``fieldlink.kit.logging`` runs every record through
``redact``; anything else that writes diagnostic text (error reports, CLI output) can too.

Two ways a secret is recognised:

* by the name it is stored under (``is_secret_key``): the value under a key such as
  ``password``, ``api_key``, ``Set-Cookie`` or ``totp_code`` is replaced whatever it looks like;
* by its shape inside free text (``redact_text``): ``Bearer``/``Basic`` credentials, Fieldlink
  keys, JWTs, PEM private keys, passwords in URLs, and ``name=value`` / ``"name": value`` /
  ``Name: value`` pairs whose name is a secret key name.

Fieldlink key shapes (a prefix, then at least 16 URL-safe characters):

* ``flk_`` — personal API keys,
* ``fld_`` — device credentials,
* ``fle_`` — one-time enrollment codes,
* ``fli_`` — organisation invitation tokens,
* ``flw_`` — webhook signing secrets.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from functools import lru_cache
from typing import Final, TypeVar

__all__ = [
    "FIELDLINK_KEY_PREFIXES",
    "REDACTED",
    "is_secret_key",
    "neutralize_newlines",
    "redact",
    "redact_text",
]

REDACTED: Final = "[REDACTED]"

FIELDLINK_KEY_PREFIXES: Final = ("flk_", "fld_", "fle_", "fli_", "flw_")

# Matched anywhere in the key once case, separators and camelCase humps are removed, so
# "X-API-Key", "apiKey" and "HTTP_AUTHORIZATION" all hit.
_KEY_FRAGMENTS: Final = (
    "password",
    "passwd",
    "passphrase",
    "pwd",
    "secret",
    "token",
    "authorization",
    "cookie",
    "apikey",
    "csrf",
    "xsrf",
    "privatekey",
    "credential",
    "session",
    "creditcard",
    "cardnumber",
    "cvc",
    "cvv",
)

# Too short to match as substrings ("otp" is inside "hotpath", "card" inside "cardinality"), so
# they must be a whole word of the key.
_KEY_WORDS: Final = frozenset({"pass", "pw", "otp", "totp", "hotp", "card", "cards", "auth"})

# A bare "code" is an error code, status code or country code; it is a secret only when a word
# before it says it is a one-time or recovery code.
_CODE_WORDS: Final = frozenset({"code", "codes"})
_CODE_QUALIFIERS: Final = frozenset(
    {
        "otp",
        "totp",
        "hotp",
        "mfa",
        "2fa",
        "recovery",
        "backup",
        "enrollment",
        "enrolment",
        "verification",
        "verify",
        "activation",
        "confirmation",
        "confirm",
        "reset",
        "auth",
        "authorization",
        "oauth",
        "pairing",
        "invite",
        "invitation",
        "login",
        "signin",
        "security",
        "magic",
        "one",
    }
)

# Metadata about a secret, not the secret: "password_changed_at", "api_key_id", "token_type",
# "credential_expires". Session keys are the exception: Django's session id *is* the bearer
# secret.
_METADATA_SUFFIXES: Final = frozenset(
    {
        "id",
        "ids",
        "count",
        "prefix",
        "hint",
        "length",
        "len",
        "at",
        "expires",
        "expiry",
        "ttl",
        "age",
        "type",
        "kind",
        "version",
        "algorithm",
        "policy",
    }
)

_CAMEL_HUMP = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")
_NON_ALNUM = re.compile(r"[^a-z0-9]+")


@lru_cache(maxsize=4096)
def is_secret_key(key: str) -> bool:
    words = [w for w in _NON_ALNUM.split(_CAMEL_HUMP.sub("_", key).lower()) if w]
    if not words:
        return False
    compact = "".join(words)
    if "session" in compact:
        return True
    hit = any(fragment in compact for fragment in _KEY_FRAGMENTS) or any(
        w in _KEY_WORDS for w in words
    )
    if not hit:
        for i, word in enumerate(words):
            if word in _CODE_WORDS and any(q in _CODE_QUALIFIERS for q in words[:i]):
                hit = True
                break
    return hit and not (len(words) > 1 and words[-1] in _METADATA_SUFFIXES)


# --- secrets recognised by shape inside free text ------------------------------------------------

_Span = tuple[int, int]
_Finder = Callable[[str], list[_Span]]

_PEM_PRIVATE_KEY = re.compile(
    r"-----BEGIN (?P<label>[A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?)-----"
    r"(?P<body>.*?)(?:-----END (?P=label)-----|\Z)",
    re.DOTALL,
)
_AUTH_SCHEME = re.compile(r"(?<![\w-])(?:bearer|basic)[ \t]+(?P<cred>[A-Za-z0-9._~+/=-]+)", re.I)
_FIELDLINK_KEY = re.compile(r"(?<![A-Za-z0-9])fl[kdeiw]_(?P<secret>[A-Za-z0-9_-]{16,})")
_STRIPE_KEY = re.compile(
    r"(?<![A-Za-z0-9])(?:(?:sk|rk)_(?:live|test)_|whsec_)(?P<secret>[A-Za-z0-9+/=]{8,})"
)
_JWT = re.compile(r"(?<![A-Za-z0-9_-])eyJ[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]*){2,4}")
_URL_USERINFO = re.compile(
    r"(?<![A-Za-z0-9+.-])[A-Za-z][A-Za-z0-9+.-]{0,31}://[^\s:/?#@]*:(?P<secret>[^\s/?#@]*)@"
)

# Headers whose whole value is secret wherever they appear, not only at the start of a line.
_SECRET_HEADER = re.compile(
    r"(?<![\w-])(?:proxy-authorization|authorization|set-cookie|cookie|x-api-key|x-auth-token"
    r"|x-csrf-?token)[ \t]*:[ \t]*(?P<secret>[^\r\n]*)",
    re.I,
)

# The three ways a name introduces a value in text; the name decides whether the value goes.
_ASSIGNMENT = re.compile(r"(?<![\w.\[\]-])(?P<name>[A-Za-z_][\w.\[\]-]{0,63})[ \t]*=[ \t]*")
_QUOTED_NAME = re.compile(r"(?P<q>[\"'])(?P<name>[^\"'\\\s]{1,64})\\?(?P=q)[ \t]*[:=][ \t]*")
_LINE_NAME = re.compile(r"^[ \t]*(?P<name>[A-Za-z][\w-]{0,63})[ \t]*:[ \t]*(?=\S)", re.M)

# Quoted values lose only their inside, so the quotes and the surrounding syntax survive; a quote
# that never closes (a truncated line) takes the rest of the line with it.
_QUOTED_VALUE = re.compile(
    r"\"(?P<d>(?:[^\"\\]|\\.)*)\""
    r"|'(?P<s>(?:[^'\\]|\\.)*)'"
    r"|\\\"(?P<e>(?:[^\"\\]|\\[^\"])*)\\\""
    r"|\\?[\"'](?P<u>[^\r\n]*)"
)
_BARE_ASSIGNED_VALUE = re.compile(r"[^&\s;,\"'<>#]+")
_BARE_QUOTED_NAME_VALUE = re.compile(r"[^\s,;&}\]\"'{\[][^\s,;&}\]\"']*")
_REST_OF_LINE = re.compile(r"[^\r\n]+")
_KEEP_LITERALS: Final = frozenset({"null", "None", "true", "false", "True", "False"})


def _group_spans(pattern: re.Pattern[str], group: str | int) -> _Finder:
    def find(text: str) -> list[_Span]:
        return [m.span(group) for m in pattern.finditer(text) if m.end(group) > m.start(group)]

    return find


def _pem_spans(text: str) -> list[_Span]:
    return [m.span("body") for m in _PEM_PRIVATE_KEY.finditer(text)]


def _looks_like_credential(word: str) -> bool:
    # "Basic information" and "Bearer authentication" are prose; real credentials are long and
    # carry digits, inner capitals or base64 punctuation.
    if len(word) < 8:
        return False
    return any(c.isdigit() or c in "+/=" for c in word) or any(c.isupper() for c in word[1:])


def _auth_scheme_spans(text: str) -> list[_Span]:
    return [
        m.span("cred") for m in _AUTH_SCHEME.finditer(text) if _looks_like_credential(m["cred"])
    ]


_ValueSpan = Callable[[str, int], _Span | None]


def _quoted_or(bare: re.Pattern[str]) -> _ValueSpan:
    def value_span(text: str, pos: int) -> _Span | None:
        if m := _QUOTED_VALUE.match(text, pos):
            return m.span(m.lastgroup or 0)
        if m := bare.match(text, pos):
            return m.span()
        return None

    return value_span


def _named_value_spans(
    pattern: re.Pattern[str], value_span: _ValueSpan, *, keep_literals: bool = False
) -> _Finder:
    # finditer over the names only, never over the values: a harmless "a=" must not swallow a
    # following "password=..." as its own value.
    def find(text: str) -> list[_Span]:
        spans = []
        covered = 0
        for m in pattern.finditer(text):
            # A name inside a value already going is gone with it; skipping it keeps
            # "password=password=..." linear instead of rescanning the tail for every name.
            if m.start() < covered or not is_secret_key(m["name"]):
                continue
            span = value_span(text, m.end())
            if span is None or span[0] == span[1]:
                continue
            if keep_literals and text[span[0] : span[1]] in _KEEP_LITERALS:
                continue
            spans.append(span)
            covered = span[1]
        return spans

    return find


def _rest_of_line(text: str, pos: int) -> _Span | None:
    m = _REST_OF_LINE.match(text, pos)
    return m.span() if m else None


_KEY_TRIGGERS: Final = (
    "pass",
    "pw",
    "secret",
    "token",
    "auth",
    "cookie",
    "key",
    "csrf",
    "private",
    "credential",
    "session",
    "card",
    "cvc",
    "cvv",
    "otp",
    "code",
)

# Each finder runs only if one of its trigger substrings is in the lower-cased text: ordinary
# log lines never reach the regular expressions.
# One-time keys that travel in URL paths: e-mail confirmation and password-reset links. Whoever
# reads them in a log could confirm an address or take over an account before its owner does.
_ONE_TIME_LINK_KEY = re.compile(
    r"/accounts/(?:confirm-email/|password/reset/key/[0-9A-Za-z]+-)"
    r"(?P<secret>(?!set-password/)[^/\s?#\"']+)"
)

_FINDERS: Final[tuple[tuple[tuple[str, ...], _Finder], ...]] = (
    (("private key",), _pem_spans),
    (
        ("authorization", "cookie", "x-api-key", "x-auth-token", "csrf"),
        _group_spans(_SECRET_HEADER, "secret"),
    ),
    (_KEY_TRIGGERS, _named_value_spans(_LINE_NAME, _rest_of_line)),
    (_KEY_TRIGGERS, _named_value_spans(_ASSIGNMENT, _quoted_or(_BARE_ASSIGNED_VALUE))),
    (
        _KEY_TRIGGERS,
        _named_value_spans(_QUOTED_NAME, _quoted_or(_BARE_QUOTED_NAME_VALUE), keep_literals=True),
    ),
    (("://",), _group_spans(_URL_USERINFO, "secret")),
    (("bearer", "basic"), _auth_scheme_spans),
    (FIELDLINK_KEY_PREFIXES, _group_spans(_FIELDLINK_KEY, "secret")),
    (("sk_", "rk_", "whsec_"), _group_spans(_STRIPE_KEY, "secret")),
    (("eyj",), _group_spans(_JWT, 0)),
    (("confirm-email/", "reset/key/"), _group_spans(_ONE_TIME_LINK_KEY, "secret")),
)


def _apply(text: str, spans: list[_Span]) -> str:
    spans.sort()
    out: list[str] = []
    pos = 0
    cur_start, cur_end = spans[0]
    for start, end in spans[1:]:
        # Touching spans merge too, so the output never holds "[REDACTED][REDACTED]" that a
        # second pass would read as one value.
        if start <= cur_end:
            cur_end = max(cur_end, end)
            continue
        out += (text[pos:cur_start], REDACTED)
        pos = cur_end
        cur_start, cur_end = start, end
    out += (text[pos:cur_start], REDACTED, text[cur_end:])
    return "".join(out)


_ANY_TRIGGER: Final = re.compile(
    "|".join(re.escape(t) for t in sorted({t for triggers, _ in _FINDERS for t in triggers}))
)


def _redact_once(text: str) -> str:
    lowered = text.lower()
    if not _ANY_TRIGGER.search(lowered):
        return text
    spans: list[_Span] = []
    for triggers, find in _FINDERS:
        if any(t in lowered for t in triggers):
            spans += find(text)
    return _apply(text, spans) if spans else text


def redact_text(text: str) -> str:
    # Replacing a value can join text around it into a new shape (a quoted value closed early,
    # a header that now ends the line); a second pass settles that, so redaction is idempotent.
    for _ in range(4):
        redacted = _redact_once(text)
        if redacted == text:
            return text
        text = redacted
    return text


# --- structures ----------------------------------------------------------------------------------

T = TypeVar("T")

_MAX_DEPTH: Final = 32


def _says_only_whether_set(value: object) -> bool:
    return value is None or isinstance(value, bool) or (isinstance(value, str) and not value)


def _redact_value(value: object, depth: int) -> object:
    if isinstance(value, str):
        return redact_text(value)
    if depth >= _MAX_DEPTH:
        # Deep or cyclic structures are not walked to the end; hiding the rest is the safe side.
        return REDACTED if isinstance(value, Mapping | list | tuple) else value
    if isinstance(value, Mapping):
        out: dict[object, object] = {}
        for key, item in value.items():
            if isinstance(key, str) and is_secret_key(key):
                out[key] = item if _says_only_whether_set(item) else REDACTED
            else:
                out[key] = _redact_value(item, depth + 1)
        return out
    if isinstance(value, list):
        return [_redact_value(item, depth + 1) for item in value]
    if isinstance(value, tuple):
        return tuple(_redact_value(item, depth + 1) for item in value)
    return value


def redact(value: T) -> T:
    # Mappings come back as plain dicts and tuples as plain tuples (named tuples lose their
    # names); every other non-string object is returned as it is.
    return _redact_value(value, 0)  # type: ignore[return-value]


# --- log-line forging ----------------------------------------------------------------------------

_CONTROL_ESCAPES: Final = {
    **{code: f"\\x{code:02x}" for code in (*range(0x00, 0x20), 0x7F, *range(0x80, 0xA0))},
    ord("\n"): "\\n",
    ord("\r"): "\\r",
    ord("\t"): "\\t",
    0x2028: "\\u2028",
    0x2029: "\\u2029",
}


def neutralize_newlines(text: str) -> str:
    # For plain-text output: a user-supplied "\n2024-01-01 INFO admin logged in" must stay on
    # the line it was written to. JSON output is already safe; json.dumps escapes all of these.
    return text.translate(_CONTROL_ESCAPES)
