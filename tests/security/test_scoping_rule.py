"""The one-scoping-mechanism rule, checked on the source: nobody filters by organisation by hand.

Customer data is narrowed to a tenant only by ``fieldlink.accounts.access`` (``resolve``,
``Scope.filter``, ``Scope.get``). A hand-written ``.filter(organisation=...)`` in a view, API
handler, service or task is the classic way one tenant ends up reading another's rows: it is easy
to get subtly wrong (the wrong variable, a missing clause on one code path) and nothing ties it to
the caller's standing. This test parses every module of the apps and fails on any query call
(``filter``, ``exclude``, ``get``, ``get_or_create``, ``update_or_create``, ``Q``) whose keyword
arguments name the organisation (``organisation``, ``organisation_id``, any ``…__organisation…``
lookup) or the audit trail's per-organisation ``chain``.

Creating rows with ``organisation=`` (``.create(...)``) is not a read and is not checked. The few
places that must query by organisation outside a Scope are listed in ``ALLOWED`` with the reason;
an entry that no longer matches anything fails the test too, so the list cannot rot.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import pytest

SRC: Final = Path(__file__).resolve().parents[2] / "src" / "fieldlink"

QUERY_METHODS: Final = frozenset({"filter", "exclude", "get", "get_or_create", "update_or_create"})
QUERY_CALLABLES: Final = frozenset({"Q"})
ORGANISATION_SEGMENTS: Final = frozenset({"organisation", "organisation_id"})
CHAIN_FIELD: Final = "chain"

# Whole modules outside the rule: the scoping layer itself, schema definitions, and code that is
# not a Django app (no customer data can be reached from there).
EXEMPT_MODULES: Final = {
    "accounts/access.py": "the scoping layer: the one place that filters by organisation",
}
EXEMPT_NAMES: Final = frozenset({"models.py"})  # declares organisation_lookup, queries nothing
EXEMPT_DIRS: Final = frozenset({"migrations"})

# (module relative to src/fieldlink, enclosing function) -> why it may query by organisation.
ALLOWED: Final[dict[tuple[str, str], str]] = {
    ("accounts/services.py", "accept_invitation"): (
        "the invitee has no standing yet, so there is no Scope to ask; the organisation comes "
        "from the invitation the token names, and the query only asks whether a membership "
        "already exists before one is created"
    ),
    ("accounts/services.py", "_tell_admins"): (
        "a system notice to the owner and admins of the organisation whose deletion was just "
        "scheduled or cancelled by a caller who passed Scope.require(ORG_DELETE)"
    ),
    ("accounts/exports.py", "_personal"): (
        "a user's own data exports are the rows with no organisation (organisation__isnull): "
        "not tenant data, and narrowed to the requesting user"
    ),
    ("audit/services.py", "record"): (
        "the audit trail's own append: it reads the head of the chain it is extending"
    ),
    ("audit/services.py", "verify_report"): (
        "platform-level integrity check (CLI 'fieldlink audit verify'), not a tenant's read"
    ),
    ("audit/services.py", "_original_sequence"): (
        "verification internals: looks up an entry's neighbours inside its own chain"
    ),
    ("audit/services.py", "_check_chain"): (
        "verification internals: looks up an entry's neighbours inside its own chain"
    ),
    ("telemetry/notifications.py", "_webhooks_to_notify"): (
        "system fan-out of an alarm event with no acting principal: the alarm names the "
        "organisation, and only its enabled webhooks are read"
    ),
    ("telemetry/notifications.py", "_subscribers"): (
        "alarm e-mail recipients: subscriptions of the alarm's organisation whose user is still "
        "a member there (like accounts' _tell_admins)"
    ),
    ("telemetry/exports.py", "purge_samples"): (
        "organisation purge hook, run by the system with no principal and so no Scope: it finds "
        "the series of the organisation being deleted (passed in by purge_due_organisations) to "
        "delete their raw samples, which have no foreign key for the cascade to follow"
    ),
    ("telemetry/retention.py", "_apply"): (
        "the hourly retention job runs for every organisation with no principal: it reads each "
        "organisation's own series to apply that organisation's retention period"
    ),
    ("telemetry/retention.py", "_prune_receipts"): (
        "the retention job prunes an organisation's old batch receipts (system task, no Scope)"
    ),
    ("devices/edge_services.py", "_asset_for"): (
        "the actor is an edge device authenticated by its credential, not a user: the "
        "organisation is the device's own (device.organisation_id), never taken from input"
    ),
    ("devices/edge_services.py", "announce"): (
        "discovery by an authenticated edge device: its 'Discovered' site is created in the "
        "device's own organisation (device.organisation_id), never one named by input"
    ),
}


@dataclass(frozen=True, order=True)
class Violation:
    module: str
    line: int
    function: str
    call: str
    keyword: str

    def __str__(self) -> str:
        return f"{self.module}:{self.line} in {self.function}(): .{self.call}({self.keyword}=...)"


def _call_name(node: ast.Call) -> str | None:
    func = node.func
    if isinstance(func, ast.Attribute) and func.attr in QUERY_METHODS:
        return func.attr
    name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
    if name in QUERY_CALLABLES:
        return str(name)
    return None


def _scoping_keyword(name: str) -> bool:
    segments = name.split("__")
    return segments[0] == CHAIN_FIELD or any(s in ORGANISATION_SEGMENTS for s in segments)


def _keywords(node: ast.Call) -> list[str]:
    names = []
    for keyword in node.keywords:
        if keyword.arg is not None:
            names.append(keyword.arg)
        elif isinstance(keyword.value, ast.Dict):
            # .filter(**{"organisation": org}) is the same thing spelt differently.
            names += [
                k.value
                for k in keyword.value.keys
                if isinstance(k, ast.Constant) and isinstance(k.value, str)
            ]
    return names


class _Finder(ast.NodeVisitor):
    def __init__(self, module: str) -> None:
        self.module = module
        self.stack: list[str] = []
        self.found: list[Violation] = []

    def _scoped(self, node: ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) -> None:
        self.stack.append(node.name)
        self.generic_visit(node)
        self.stack.pop()

    visit_FunctionDef = visit_AsyncFunctionDef = visit_ClassDef = _scoped  # noqa: N815

    def visit_Call(self, node: ast.Call) -> None:
        call = _call_name(node)
        if call is not None:
            function = self._function()
            self.found += [
                Violation(self.module, node.lineno, function, call, name)
                for name in _keywords(node)
                if _scoping_keyword(name)
            ]
        self.generic_visit(node)

    def _function(self) -> str:
        # The innermost function (a lambda or nested def reports its enclosing def).
        return self.stack[-1] if self.stack else "<module>"


def find_violations(source: str, module: str) -> list[Violation]:
    finder = _Finder(module)
    finder.visit(ast.parse(source, filename=module))
    return finder.found


def app_modules() -> list[Path]:
    modules = []
    for path in sorted(SRC.rglob("*.py")):
        relative = path.relative_to(SRC).as_posix()
        if relative in EXEMPT_MODULES or path.name in EXEMPT_NAMES:
            continue
        if EXEMPT_DIRS & set(path.relative_to(SRC).parts):
            continue
        modules.append(path)
    return modules


def all_violations() -> list[Violation]:
    found: list[Violation] = []
    for path in app_modules():
        module = path.relative_to(SRC).as_posix()
        found += find_violations(path.read_text(encoding="utf-8"), module)
    return sorted(found)


# -- the rule on the real code --------------------------------------------------------------------


def test_nobody_filters_customer_data_by_organisation_by_hand() -> None:
    unexplained = [v for v in all_violations() if (v.module, v.function) not in ALLOWED]
    assert unexplained == [], (
        "Query through fieldlink.accounts.access (Scope.filter / Scope.get / resolve), not by "
        "organisation by hand:\n" + "\n".join(map(str, unexplained))
    )


def test_every_allow_list_entry_is_still_needed() -> None:
    used = {(v.module, v.function) for v in all_violations()}
    assert sorted(set(ALLOWED) - used) == []


def test_every_exemption_has_a_reason() -> None:
    assert all(reason.strip() for reason in ALLOWED.values())
    assert all(reason.strip() for reason in EXEMPT_MODULES.values())
    for module in EXEMPT_MODULES:
        assert (SRC / module).is_file(), module


def test_the_checker_reads_the_views_api_handlers_services_and_tasks() -> None:
    checked = {path.relative_to(SRC).as_posix() for path in app_modules()}
    for module in (
        "accounts/views.py",
        "accounts/api.py",
        "accounts/services.py",
        "accounts/tasks.py",
        "audit/services.py",
        "audit/views.py",
        "audit/api.py",
    ):
        assert module in checked
    assert "accounts/access.py" not in checked
    assert not [m for m in checked if "/migrations/" in m or m.endswith("/models.py")]


# -- the checker itself ---------------------------------------------------------------------------

PLANTED = """
from django.db.models import Q

def list_devices(request, org_id):
    return Device.objects.filter(organisation_id=org_id)

def one_point(request, org, pk):
    return Point.objects.select_related("device").get(pk=pk, device__organisation=org)

class Handler:
    def members(self, org):
        return Membership.objects.exclude(role="owner").filter(**{"organisation": org})

def entries(org):
    return AuditEntry.objects.filter(chain=str(org.pk))

def either(org):
    return Device.objects.filter(Q(organisation=org) | Q(shared=True))

def upsert(org):
    return Asset.objects.update_or_create(organisation=org, name="pump")

def fine(scope, org):
    Device.objects.create(organisation=org, name="new")  # creating rows is not a read
    scope.filter(Device.objects.all())
    return Device.objects.filter(name="organisation", owner__email="x")
"""


def test_checker_catches_planted_violations() -> None:
    found = find_violations(PLANTED, "devices/views.py")
    assert [(v.function, v.call, v.keyword) for v in found] == [
        ("list_devices", "filter", "organisation_id"),
        ("one_point", "get", "device__organisation"),
        ("members", "filter", "organisation"),
        ("entries", "filter", "chain"),
        ("either", "Q", "organisation"),
        ("upsert", "update_or_create", "organisation"),
    ]
    assert str(found[0]) == ("devices/views.py:5 in list_devices(): .filter(organisation_id=...)")


@pytest.mark.parametrize(
    "keyword",
    [
        "organisation",
        "organisation_id",
        "organisation__name",
        "organisation_id__in",
        "chain",
        "chain__startswith",
        "device__organisation",
        "asset__device__organisation_id",
    ],
)
def test_checker_flags_every_spelling_of_the_organisation(keyword: str) -> None:
    source = f"def f(x):\n    return Thing.objects.filter({keyword}=x)\n"
    assert [v.keyword for v in find_violations(source, "m.py")] == [keyword]


@pytest.mark.parametrize(
    "keyword", ["organisation_name", "name", "user", "user__email", "chained", "region"]
)
def test_checker_leaves_other_fields_alone(keyword: str) -> None:
    source = f"def f(x):\n    return Thing.objects.filter({keyword}=x)\n"
    assert find_violations(source, "m.py") == []


def test_allow_list_is_per_function_not_per_module() -> None:
    # The same module's other functions are still checked.
    source = "def accept_invitation(o):\n    M.objects.filter(organisation=o)\n\n" + (
        "def sneaky(o):\n    M.objects.filter(organisation=o)\n"
    )
    found = find_violations(source, "accounts/services.py")
    unexplained = [v for v in found if (v.module, v.function) not in ALLOWED]
    assert [v.function for v in unexplained] == ["sneaky"]
