"""The configured password hasher: Django's bcrypt-SHA256 format, cost 12, bounded concurrency."""

from __future__ import annotations

import threading
import time

import pytest
from django.contrib.auth.hashers import (
    BCryptSHA256PasswordHasher,
    check_password,
    get_hasher,
    identify_hasher,
    make_password,
)

from fieldlink.accounts import hashers
from fieldlink.accounts.hashers import BoundedBCryptSHA256PasswordHasher
from tests.plugins.log_canary import register_canary

PASSWORD = register_canary("violet-harbor-quantum-lantern-97")


def test_default_hasher_is_bounded_bcrypt_sha256_with_cost_12() -> None:
    hasher = get_hasher("default")
    assert isinstance(hasher, BoundedBCryptSHA256PasswordHasher)
    encoded = make_password(PASSWORD)
    assert encoded.startswith("bcrypt_sha256$$2b$12$")
    assert identify_hasher(encoded).safe_summary(encoded)["work factor"] == 12


def test_hashes_are_interchangeable_with_djangos_own_hasher() -> None:
    ours = make_password(PASSWORD)
    assert BCryptSHA256PasswordHasher().verify(PASSWORD, ours)
    theirs = BCryptSHA256PasswordHasher().encode(PASSWORD, BCryptSHA256PasswordHasher().salt())
    assert check_password(PASSWORD, theirs)
    assert not check_password(PASSWORD + "x", theirs)


def test_concurrent_hashing_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    running = 0
    peak = 0
    lock = threading.Lock()

    def slow_verify(self: object, password: str, encoded: str) -> bool:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        time.sleep(0.05)
        with lock:
            running -= 1
        return True

    monkeypatch.setattr(BCryptSHA256PasswordHasher, "verify", slow_verify)
    threads = [
        threading.Thread(target=BoundedBCryptSHA256PasswordHasher().verify, args=("p", "e"))
        for _ in range(6)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert peak == hashers.HASHING_CONCURRENCY
