"""The demo a fresh ``./dev run`` sets up: an organisation, its admin, and an edge device.

First run: a demo organisation owned by an admin account whose password is generated here and
returned once (printed by the launcher, never stored in clear and never logged), an edge device
for the simulated plant and its one-time enrollment code. Later runs find the same organisation
(``state.json`` under the var directory, holding ids only) and create nothing; a new enrollment
code is issued only when the agent has no credential yet. There is no fixed default password.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from allauth.account.models import EmailAddress
from django.db import transaction

from fieldlink.accounts import access, services
from fieldlink.accounts.access import Principal
from fieldlink.accounts.models import Organisation, Region, User
from fieldlink.devices import services as device_services
from fieldlink.devices.models import EdgeDevice
from fieldlink.kit.files import write_atomically
from fieldlink.updates import repository, tuf_repo
from fieldlink.updates import services as update_services

__all__ = ["DEMO_EMAIL", "Demo", "ensure_demo", "ensure_update_repository", "new_enrollment_code"]

DEMO_EMAIL: Final = "admin@demo.fieldlink.localhost"
DEMO_ORG: Final = "Demo plant"
DEMO_DEVICE: Final = "demo-edge"


@dataclass(frozen=True)
class Demo:
    organisation_id: str
    device_id: str
    email: str
    password: str | None  # only on the run that created the account


def _state_file(var_dir: Path) -> Path:
    return var_dir / "demo" / "state.json"


def _existing(var_dir: Path) -> Demo | None:
    path = _state_file(var_dir)
    if not path.is_file():
        return None
    state = json.loads(path.read_text())
    org = Organisation.objects.filter(pk=state.get("organisation_id")).first()
    device = EdgeDevice.objects.filter(pk=state.get("device_id")).first()
    if org is None or device is None or device.organisation_id != org.pk:
        return None  # the database was reset: start over
    return Demo(str(org.pk), str(device.pk), state["email"], None)


def ensure_demo(var_dir: Path) -> Demo:
    """The demo organisation, created on first use (see the module docstring)."""
    found = _existing(var_dir)
    if found is not None:
        return found
    # 24 random URL-safe characters (144 bits): passes every password rule on its own.
    password = secrets.token_urlsafe(18)
    with transaction.atomic():
        user = User.objects.filter(email__iexact=DEMO_EMAIL).first()
        if user is None:
            user = User.objects.create_user(email=DEMO_EMAIL, password=password)
        else:
            user.set_password(password)
            user.save(update_fields=["password"])
        # The address cannot receive mail: it is marked verified so the admin can sign in.
        EmailAddress.objects.update_or_create(
            user=user, email=user.email, defaults={"verified": True, "primary": True}
        )
        scope = services.create_organisation(
            Principal(user, "session"), name=DEMO_ORG, region=Region.EU_CENTRAL
        )
        issued = device_services.create_device(scope, name=DEMO_DEVICE)
    state = {
        "organisation_id": str(scope.organisation.pk),
        "device_id": str(issued.device.pk),
        "email": user.email,
    }
    path = _state_file(var_dir)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_atomically(path, json.dumps(state).encode(), 0o600)
    return Demo(state["organisation_id"], state["device_id"], user.email, password)


def new_enrollment_code(demo: Demo) -> str:
    """A fresh one-time code for the demo device (the agent has no credential yet)."""
    with transaction.atomic():
        owner = User.objects.get(email__iexact=demo.email)
        scope = access.resolve(Principal(owner, "session"), demo.organisation_id)
        return device_services.new_enrollment_code(scope, demo.device_id).secret


def ensure_update_repository() -> bool:
    """A signed-update repository for the demo, made on first use; True when made now.

    The cloud's online keys are created (``var/tuf/online/``) and a root, targets and empty
    release role are signed with offline keys generated here and then thrown away: nothing of
    them is written anywhere. The demo can therefore sign device configuration (online key)
    but never software, which is the point of the offline keys; ``docs/updates.md`` shows how
    a release engineer sets up a real repository with ``fieldlink release``.
    """
    if repository.has_repository():
        return False
    offline = tuf_repo.Repository.with_fresh_keys(repository.online_signers(create=True))
    with transaction.atomic():
        update_services.publish_release(
            offline.files, {}, actor=update_services.AuditActor.command("fieldlink demo")
        )
    return True
