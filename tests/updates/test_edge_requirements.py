"""requirements/edge.txt (what an agent bundle carries) stays a complete, consistent subset."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[2]
# What the agent imports directly (cli, edge, protocol, kit); their dependencies follow.
AGENT_ROOTS = ("typer", "structlog", "msgspec", "httpx", "pymodbus", "asyncua", "tuf")


def _pins(name: str) -> dict[str, str]:
    pins = {}
    for line in (ROOT / "requirements" / name).read_text().splitlines():
        if line and not line.startswith(("#", "-r")):
            requirement = Requirement(line)
            pins[requirement.name.lower().replace("_", "-")] = str(requirement.specifier)
    return pins


def test_edge_pins_are_the_base_pins() -> None:
    base, edge = _pins("base.txt"), _pins("edge.txt")
    assert edge, "requirements/edge.txt is empty"
    assert {name: edge[name] for name in edge if base.get(name) != edge[name]} == {}


def test_edge_requirements_cover_the_agents_dependency_tree() -> None:
    edge = _pins("edge.txt")
    missing: set[str] = set()
    todo = list(AGENT_ROOTS)
    seen: set[str] = set()
    while todo:
        name = todo.pop().lower().replace("_", "-")
        if name in seen:
            continue
        seen.add(name)
        if name not in edge:
            missing.add(name)
        for line in importlib.metadata.distribution(name).requires or []:
            requirement = Requirement(line)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                todo.append(requirement.name)
    assert missing == set()
    assert "django" not in edge
