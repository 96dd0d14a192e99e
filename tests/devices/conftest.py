"""Plant tests: the accounts fixtures plus an organisation with one member per role."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest

from fieldlink.accounts import access, services
from fieldlink.accounts.access import Principal, Scope
from fieldlink.accounts.models import Membership, Organisation, Role, User
from tests.accounts.conftest import (
    MakeClient,
    MakeUser,
    SecureClient,
    _fresh_cache,
    make_client,
    make_user,
    web,
)

__all__ = ["Team", "_fresh_cache", "as_user", "make_client", "make_user", "rival", "team", "web"]


@dataclass
class Team:
    org: Organisation
    users: dict[Role, User]

    def scope(self, role: Role = Role.OWNER) -> Scope:
        return access.resolve(Principal(self.users[role], "session"), self.org.pk)

    @property
    def api(self) -> str:
        return f"/api/v1/orgs/{self.org.pk}"

    @property
    def pages(self) -> str:
        return f"/orgs/{self.org.pk}/plant/"


def _team(make_user: MakeUser, domain: str, name: str) -> Team:
    owner = make_user(f"owner@{domain}")
    org = services.create_organisation(
        Principal(owner, "session"), name=name, region="eu-central"
    ).organisation
    users = {Role.OWNER: owner}
    for role in (Role.ADMIN, Role.ENGINEER, Role.VIEWER):
        users[role] = make_user(f"{role}@{domain}")
        Membership.objects.create(organisation=org, user=users[role], role=role)
    return Team(org, users)


@pytest.fixture
def team(make_user: MakeUser) -> Team:
    return _team(make_user, "acme-water.example", "Acme Water")


@pytest.fixture
def rival(make_user: MakeUser) -> Team:
    return _team(make_user, "rival-gas.example", "Rival Gas Secret Plant")


@pytest.fixture
def as_user(make_client: MakeClient) -> Callable[[User], SecureClient]:
    def make(user: User) -> SecureClient:
        client = make_client(ip="198.51.100.20")
        client.force_login(user)
        return client

    return make
