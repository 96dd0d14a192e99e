"""Updates tests: two tenants, a repository published to the test database, enrolled devices.

The tenants are created in a transaction of their own: several tests here commit (the edge
endpoint handles requests on its own connections), and the fixtures' audited changes need one.
Inside a test's transaction that is a savepoint and changes nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from django.db import transaction

from fieldlink.devices import credentials
from fieldlink.devices.models import EdgeDevice
from fieldlink.updates import repository, services, tuf_repo
from fieldlink.updates.models import Release
from tests.accounts.conftest import MakeUser
from tests.devices.conftest import Team, _fresh_cache, _team, as_user, make_client, make_user, web
from tests.plugins.log_canary import register_canary

__all__ = [
    "Publisher",
    "_fresh_cache",
    "as_user",
    "enrolled",
    "make_client",
    "make_user",
    "publisher",
    "rival",
    "team",
    "web",
]


@pytest.fixture
def team(make_user: MakeUser) -> Team:
    with transaction.atomic():
        return _team(make_user, "acme-water.example", "Acme Water")


@pytest.fixture
def rival(make_user: MakeUser) -> Team:
    with transaction.atomic():
        return _team(make_user, "rival-gas.example", "Rival Gas Secret Plant")


class Publisher:
    """A release engineer's offline repository, published to this cloud's database."""

    def __init__(self, var: Path) -> None:
        self.var = var
        self.repo = tuf_repo.Repository.with_fresh_keys(repository.online_signers(create=True))
        with transaction.atomic():
            services.publish_release(self.repo.files, {}, actor=services.AuditActor.command("test"))

    def bundle(self, version: str, data: bytes) -> tuple[str, Path]:
        path = self.var / f"fieldlink-agent-{version}.tar"
        path.write_bytes(data)
        return tuf_repo.software_path(version), path

    def publish(
        self, version: str, data: bytes | None = None, *, allow_downgrade: bool = False
    ) -> list[Release]:
        data = data if data is not None else f"bundle {version}".encode() * 100
        self.repo.add_software(version, data, allow_downgrade=allow_downgrade)
        target, bundle = self.bundle(version, data)
        with transaction.atomic():
            return services.publish_release(
                self.repo.files, {target: bundle}, actor=services.AuditActor.command("test")
            )


@pytest.fixture
def publisher(settings: Any, tmp_path: Path) -> Publisher:
    settings.VAR_DIR = tmp_path
    return Publisher(tmp_path)


def enrolled(
    team: Team, name: str, *, version: str = "1.0.0", group: str = ""
) -> tuple[EdgeDevice, str]:
    """An enrolled device of ``team`` running ``version``, and its credential."""
    device = EdgeDevice.objects.create(
        organisation=team.org, name=name, software_version=version, group=group
    )
    code = credentials.issue_enrollment_code(device)
    register_canary(code.secret)
    with transaction.atomic():
        issued = credentials.enroll(code.secret)
    register_canary(issued.secret)
    return EdgeDevice.objects.get(pk=device.pk), issued.secret
