"""Django's bcrypt-SHA256 hasher with bounded concurrency.

Every sign-in costs ~0.25 s of CPU (bcrypt, cost 12). Unbounded, a burst of sign-in attempts
occupies every core and starves all other requests of the process. A semaphore lets at most
``HASHING_CONCURRENCY`` hashes run at once (one core fewer than the machine has, at least one);
the rest wait without using CPU. The stored format is Django's own ``bcrypt_sha256``, so hashes
move freely between this class and Django's.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from django.contrib.auth.hashers import BCryptSHA256PasswordHasher

HASHING_CONCURRENCY = max(1, (os.cpu_count() or 2) - 1)
_slots = threading.BoundedSemaphore(HASHING_CONCURRENCY)
_held = threading.local()


@contextmanager
def _slot() -> Iterator[None]:
    # Reentrant per thread: Django's verify() and harden_runtime() call encode(), and a thread
    # that waited for the slot it already holds would wait forever (with one slot, every time).
    if getattr(_held, "depth", 0):
        _held.depth += 1
        try:
            yield
        finally:
            _held.depth -= 1
        return
    with _slots:
        _held.depth = 1
        try:
            yield
        finally:
            _held.depth = 0


class BoundedBCryptSHA256PasswordHasher(BCryptSHA256PasswordHasher):
    rounds = 12

    def encode(self, password: str, salt: str) -> str:
        with _slot():
            return str(super().encode(password, salt))

    def verify(self, password: str, encoded: str) -> bool:
        with _slot():
            return bool(super().verify(password, encoded))

    def harden_runtime(self, password: str, encoded: str) -> None:
        with _slot():
            super().harden_runtime(password, encoded)
